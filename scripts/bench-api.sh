#!/usr/bin/env bash
# scripts/bench-api.sh: millrace's API against the same paths on axum and
# redis-rs's async cluster client (one tokio current-thread core;
# benches/peers/axum-redis), in one run:
#   - events: POST /v1/events, FlatBuffers batches of BATCH events;
#   - kv-put: PUT /v1/kv/{key}, 100-byte values over 1,000 keys;
#   - kv-get: GET /v1/kv/{key} over the same keys, zipf 0.99, all cache hits (the
#     kv-put run filled them).
#
# Both servers verify bodies and run the same scripts on the same 3-master
# Redis Cluster. Each server runs alone, pinned to SERVER_CPU; the cluster
# and millrace load share LOAD_CPU, so the server has a CPU to itself. The
# queue is emptied before each write run. For each server and workload,
# over ROUNDS rounds (a fresh server process each round, order rotating):
#   - closed loop, 64 connections at pipeline depth PIPELINE, DURATION
#     seconds after a 1 s warm-up:
#     requests/s and requests per server CPU-second (utime+stime from /proc
#     over the measured window);
#   - open loop at RATE requests/s: p50, p99 and p99.9 (corrected).
# Results: benches/results/<date>-<host>-api.json and .md (medians); with
# --pipeline N above 1, -api-pN.json and .md.
#
# Usage: scripts/bench-api.sh [--duration SECONDS] [--rounds N] [--rate REQUESTS_PER_S] [--batch N] [--pipeline N] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

duration=5
rounds=3
rate=2000
batch=10
pipeline=1
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --pipeline) pipeline="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
server_cpu="${SERVER_CPU:-0}"
load_cpu="${LOAD_CPU:-1}"
results_dir="${RESULTS_DIR:-benches/results}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages redis-server redis-tools curl python3 pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building millrace and the axum + redis-rs peer (release)"
  cargo build --release --quiet
  cargo build --release --quiet --manifest-path benches/peers/axum-redis/Cargo.toml
fi
millrace="$root/target/release/millrace"
peer="$root/benches/peers/axum-redis/target/release/peer-axum-redis"

bench_redis bench-api 21400


# start NAME PORT: the server pinned to the server CPU; sets server_pid.
start() {
  case "$1" in
    millrace)
      taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$2" --cores "$server_cpu," \
        --redis-seeds "$seeds" --admin-listen "" > "$work/millrace.log" 2>&1 & ;;
    axum-redis)
      taskset -c "$server_cpu" "$peer" "127.0.0.1:$2" "$seeds" > "$work/peer.log" 2>&1 & ;;
  esac
  server_pid=$!
  pids+=("$server_pid")
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$1 did not start" >&2
  return 1
}

# args WORKLOAD: millrace load's flags for it.
args() {
  case "$1" in
    events) echo "--workload events --batch $batch" ;;
    kv-put) echo "--workload kv --read-ratio 0 --keys 1000 --value-bytes 100" ;;
    kv-get) echo "--workload kv --read-ratio 1 --keys 1000 --key-dist zipf:0.99" ;;
  esac
}

results="$work/results.tsv"
: > "$results"
servers=(millrace axum-redis)
workloads=(events kv-put kv-get)
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  for i in 0 1; do
    name="${servers[$(( (i + round - 1) % 2 ))]}"
    port=$(free_port)
    empty_queue
    start "$name" "$port"
    url="http://127.0.0.1:$port"
    for workload in "${workloads[@]}"; do
      # shellcheck disable=SC2046
      set -- $(args "$workload")
      [ "$workload" = kv-get ] || empty_queue
      taskset -c "$load_cpu" "$millrace" load "$url" "$@" -c 64 -p "$pipeline" -d 1s --max-error-ratio 1 > /dev/null
      before=$(cpu_ticks "$server_pid")
      taskset -c "$load_cpu" "$millrace" load "$url" "$@" -c 64 -p "$pipeline" \
        -d "${duration}s" --max-error-ratio 1 --json "$work/closed.json" > /dev/null
      after=$(cpu_ticks "$server_pid")
      [ "$workload" = events ] && empty_queue
      taskset -c "$load_cpu" "$millrace" load "$url" "$@" -c 64 \
        -R "$rate" -d "${duration}s" --warmup 1s --max-error-ratio 1 --json "$work/open.json" > /dev/null || [ $? -eq 1 ]
      line=$(python3 - "$work/closed.json" "$work/open.json" "$((after - before))" "$(getconf CLK_TCK)" "$workload" <<'PY'
import json, sys
closed, opened = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
cpu = int(sys.argv[3]) / int(sys.argv[4])
l = opened["latency_ms"]
# A GET of a cached key must find it: a 404 there is an error too.
misses = closed["statuses"]["4xx"] if sys.argv[5] == "kv-get" else 0
errors = closed["errors"]["connect"] + closed["requests"]["failed"] + closed["errors"]["status"] + misses
print("\t".join(str(x) for x in [round(closed["requests_per_s"]), cpu, round(closed["requests"]["answered"] / cpu) if cpu else 0,
                                  errors, l["p50"], l["p99"], l["p99.9"], opened["requests"]["answered"]]))
PY
)
      printf '%s\t%s\t%s\n' "$name" "$workload" "$line" >> "$results"
      IFS=$'\t' read -r rps cpu per_cpu errors p50 p99 p999 _ <<<"$line"
      printf '  %-11s %-7s %8s req/s  server CPU %5.2f s  %9s req per CPU-s  errors %s  | at %s/s: p50 %s p99 %s p99.9 %s ms\n' \
        "$name" "$workload" "$rps" "$cpu" "$per_cpu" "$errors" "$rate" "$p50" "$p99" "$p999"
    done
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  done
done

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="$results_dir/${stamp}-${host}-api"
[ "$pipeline" = 1 ] || base="$base-p$pipeline"
python3 - "$results" "$base" "$duration" "$rounds" "$rate" "$batch" "$server_cpu" "$load_cpu" "$pipeline" <<'PY'
import datetime, json, statistics, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, base = sys.argv[1], sys.argv[2]
duration, rounds, rate, batch = (int(x) for x in sys.argv[3:7])
server_cpu, load_cpu, pipeline = sys.argv[7], sys.argv[8], int(sys.argv[9])
runs = []
for line in open(results):
    name, workload, rps, cpu, per_cpu, errors, p50, p99, p999, open_answered = line.rstrip("\n").split("\t")
    runs.append({"server": name, "workload": workload, "requests_per_second": int(rps), "server_cpu_seconds": float(cpu),
                 "requests_per_server_cpu_second": int(per_cpu), "errors": int(errors),
                 "open_loop_p50_ms": float(p50), "open_loop_p99_ms": float(p99), "open_loop_p999_ms": float(p999)})
routes = {"events": f"POST /v1/events ({batch} FlatBuffers events per request)",
          "kv-put": "PUT /v1/kv/{key} (100-byte values, 1,000 keys)",
          "kv-get": "GET /v1/kv/{key} (cache hits, 1,000 keys, zipf 0.99)"}
summary, ratios = {}, {}
for workload in routes:
    summary[workload] = {}
    for name in ("millrace", "axum-redis"):
        mine = [r for r in runs if r["server"] == name and r["workload"] == workload]
        s = {k: statistics.median(r[k] for r in mine) for k in
             ("requests_per_second", "requests_per_server_cpu_second", "open_loop_p50_ms", "open_loop_p99_ms", "open_loop_p999_ms")}
        s["errors"] = sum(r["errors"] for r in mine)
        summary[workload][name] = s
    peer = summary[workload]["axum-redis"]["requests_per_server_cpu_second"]
    ratios[workload] = round(summary[workload]["millrace"]["requests_per_server_cpu_second"] / peer, 2) if peer else None
command = f"scripts/bench-api.sh --duration {duration} --rounds {rounds} --rate {rate} --batch {batch}"
if pipeline != 1:
    command += f" --pipeline {pipeline}"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(), "method": {"routes": routes, "server_cpu": server_cpu, "redis_and_load_cpu": load_cpu,
          "closed_loop": f"64 connections, depth {pipeline}", "open_loop_rate_requests_per_second": rate, "rounds": rounds,
          "duration_seconds": duration},
          "summary": summary, "millrace_over_peer_per_server_cpu_second": ratios, "runs": runs}
json.dump(report, open(base + ".json", "w"), indent=2)
m = report["machine"]
lines = [f"Server on CPU {server_cpu}, Redis Cluster (3 masters) and millrace load on CPU {load_cpu}, medians of {rounds} "
         f"rounds; {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.", f"Command: `{command}`", "",
         f"| route | server | req/s (closed loop, 64 conns, depth {pipeline}) | req per server CPU-s | p50 ms at {rate}/s | p99 ms | p99.9 ms | errors |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
for workload, servers in summary.items():
    for name, s in servers.items():
        lines.append(f"| {routes[workload]} | {name} | {s['requests_per_second']:,.0f} | {s['requests_per_server_cpu_second']:,.0f} | "
                     f"{s['open_loop_p50_ms']:.3f} | {s['open_loop_p99_ms']:.3f} | {s['open_loop_p999_ms']:.3f} | {s['errors']} |")
lines.append("")
for workload, ratio in ratios.items():
    lines.append(f"- {routes[workload]}: millrace / axum + redis-rs, requests per server CPU-second: **{ratio}x**")
open(base + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "written: $base.json $base.md"
