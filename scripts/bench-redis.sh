#!/usr/bin/env bash
# scripts/bench-redis.sh: millrace's Redis Cluster client against
# redis-benchmark --cluster and redis-rs's async cluster client, in one run.
#
# A 3-master cluster (scripts/redis-cluster.sh) runs pinned to SERVER_CPU;
# each client runs pinned to LOAD_CPU, alternating SET and GET of 3-byte
# values over 100,000 keys, REQUESTS commands per run:
#   - redis-benchmark --cluster -P 16 -r 100000 (its default 50 clients: 800
#     in flight), and the same without -r, where every command uses one key
#     and so one master: not the same work, shown for reference;
#   - millrace (benches/redis_client.rs) with 800 commands in flight;
#   - redis-rs 1.x, ClusterConnection on a current-thread tokio runtime,
#     800 in flight (benches/peers/redis-rs).
# For millrace and redis-rs it also records the client's CPU time, for
# operations per client CPU-second. The clients take turns over ROUNDS
# rounds, order rotating; the report gives medians.
#
# Results: benches/results/<date>-<host>-redis.json and .md
#
# Usage: scripts/bench-redis.sh [--requests N] [--rounds N] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1)
set -euo pipefail

requests=1000000
rounds=3
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
server_cpu="${SERVER_CPU:-0}"
load_cpu="${LOAD_CPU:-1}"
depth=800

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages redis-server redis-tools python3 pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building millrace's client benchmark and the redis-rs peer (release)"
  cargo build --release --quiet --bench redis_client
  cargo build --release --quiet --manifest-path benches/peers/redis-rs/Cargo.toml
fi
ours="$(newest_bench redis_client)"
peer="$root/benches/peers/redis-rs/target/release/peer-redis-rs"

dir="$root/var/bench-redis"
# Bus ports are +10000: kept below the ephemeral range (32768 and up).
port=$((20000 + RANDOM % 600))
cleanup() { scripts/redis-cluster.sh stop --dir "$dir" > /dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
step "a 3-master Redis Cluster on CPU $server_cpu, ports $port-$((port + 2))"
seeds=$(taskset -c "$server_cpu" scripts/redis-cluster.sh start --dir "$dir" --port "$port")
echo "$seeds"

results="$(mktemp)"
# run NAME: one measured run; appends "name rps cpu_seconds" to the results.
run() {
  local name="$1" line rps cpu
  case "$name" in
    redis-benchmark*)
      local spread=(-r 100000)
      [ "$name" = redis-benchmark-one-key ] && spread=()
      line=$(taskset -c "$load_cpu" redis-benchmark --cluster -h 127.0.0.1 -p "$port" -P 16 \
        -t set,get -n "$requests" "${spread[@]}" -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second')
      # Both tests ran N requests each: the combined rate is 2N over their total time.
      rps=$(awk '/^SET:/ {s=$2} /^GET:/ {g=$2} END {printf "%.0f", 2 / (1 / s + 1 / g)}' <<<"$line")
      cpu="" ;;
    millrace|redis-rs)
      local binary="$ours"
      [ "$name" = redis-rs ] && binary="$peer"
      line=$(taskset -c "$load_cpu" "$binary" "$seeds" --requests "$requests" --depth "$depth")
      rps=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["requests_per_second"])' "$line")
      cpu=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["cpu_seconds"])' "$line") ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$rps" "$cpu" >> "$results"
  printf '  %-16s %10s ops/s  client CPU %s s\n' "$name" "$rps" "${cpu:-n/a}"
}

clients=(millrace redis-benchmark redis-rs redis-benchmark-one-key)
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  for i in 0 1 2 3; do
    run "${clients[$(( (i + round - 1) % 4 ))]}"
  done
done

mkdir -p benches/results
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="benches/results/${stamp}-${host}-redis"
python3 - "$results" "$base" "$requests" "$rounds" "$server_cpu" "$load_cpu" <<'PY'
import datetime, json, statistics, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, base, requests, rounds, server_cpu, load_cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
runs = []
for line in open(results):
    name, rps, cpu = line.rstrip("\n").split("\t")
    cpu = float(cpu) if cpu else None
    runs.append({"client": name, "ops_per_second": round(float(rps)), "client_cpu_seconds": cpu,
                 "ops_per_client_cpu_second": round(requests / cpu) if cpu else None})
summary = {}
for name in ("millrace", "redis-benchmark", "redis-rs", "redis-benchmark-one-key"):
    mine = [r for r in runs if r["client"] == name]
    per_cpu = [r["ops_per_client_cpu_second"] for r in mine if r["ops_per_client_cpu_second"]]
    summary[name] = {"median_ops_per_second": round(statistics.median(r["ops_per_second"] for r in mine)),
                     "median_ops_per_client_cpu_second": round(statistics.median(per_cpu)) if per_cpu else None}
ratios = {
    "millrace / redis-benchmark ops/s": round(summary["millrace"]["median_ops_per_second"] / summary["redis-benchmark"]["median_ops_per_second"], 2),
    "millrace / redis-rs ops per client CPU-s": round(summary["millrace"]["median_ops_per_client_cpu_second"] / summary["redis-rs"]["median_ops_per_client_cpu_second"], 2),
    "millrace / redis-rs ops/s": round(summary["millrace"]["median_ops_per_second"] / summary["redis-rs"]["median_ops_per_second"], 2),
}
command = f"scripts/bench-redis.sh --requests {requests} --rounds {rounds}"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(), "method": {"cluster": "3 masters, no replicas, all on CPU " + server_cpu,
          "clients": "one thread on CPU " + load_cpu + ", 800 commands in flight (redis-benchmark: 50 clients x -P 16)",
          "workload": "SET and GET alternately, 3-byte values, 100,000 keys", "requests_per_run": requests, "rounds": rounds},
          "summary": summary, "ratios": ratios, "runs": runs}
json.dump(report, open(base + ".json", "w"), indent=2)
m = report["machine"]
lines = [f"SET/GET on a 3-master cluster (CPU {server_cpu}), client on CPU {load_cpu}, 800 in flight, {requests:,} commands per run, "
         f"medians of {rounds} rounds; {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.",
         f"Command: `{command}`", "",
         "| client | ops/s | ops per client CPU-second |", "|---|---:|---:|"]
for name, s in summary.items():
    per_cpu = f"{s['median_ops_per_client_cpu_second']:,}" if s["median_ops_per_client_cpu_second"] else "n/a"
    label = "redis-benchmark, one key (one master; not the same work)" if name == "redis-benchmark-one-key" else name
    lines.append(f"| {label} | {s['median_ops_per_second']:,} | {per_cpu} |")
lines.append("")
for name, ratio in ratios.items():
    lines.append(f"- {name}: **{ratio}x**")
open(base + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
rm -f "$results"
echo "written: $base.json $base.md"
