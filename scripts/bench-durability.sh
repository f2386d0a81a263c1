#!/usr/bin/env bash
# scripts/bench-durability.sh: what Redis's append-only file costs the write
# routes, side by side in one run: AOF off, appendfsync everysec (the
# project's default) and appendfsync always, on the same 3-master cluster
# and the same millrace server:
#   - events: POST /v1/events, FlatBuffers batches of BATCH events;
#   - kv-put: PUT /v1/kv/{key}, 100-byte values over 1,000 keys.
#
# The server runs alone, pinned to SERVER_CPU; the cluster and millrace load
# share LOAD_CPU. Each round sets every master to each setting in turn
# (CONFIG SET; the order rotates from round to round), empties the queue,
# and for each workload runs:
#   - closed loop, 64 connections at pipeline depth PIPELINE, DURATION
#     seconds after a 1 s warm-up: requests/s, and requests per server
#     CPU-second and per Redis CPU-second (utime+stime from /proc over the
#     measured window, the three masters together). A slower Redis lowers
#     the rate, and a server at a lower rate batches less per system call,
#     so this figure mixes Redis's speed into the server's cost;
#   - open loop at RATE requests/s, DURATION seconds after a 1 s warm-up:
#     p50, p99 and p99.9 (corrected), and requests per server CPU-second
#     and per Redis CPU-second at that same offered rate: the server's own
#     cost of each setting, and the bar.
# No database core drains the queue (so that the server's CPU is the
# executor's alone); the queue is emptied between runs, and the server's
# backlog caps are set above what one run queues, so that no run is cut
# short by 503s (cheaper than the writes they refuse). Automatic AOF
# rewrites are put off for the run (auto-aof-rewrite-min-size 64gb), so that
# no fork lands in one setting's runs and not another's.
# Results: benches/results/<date>-<host>-durability.json and .md (medians;
# the everysec/off ratio of PUT requests per server CPU-second at RATE is
# the bar: at least 0.95). CPU time is read in clock ticks (10 ms): keep
# RATE x DURATION high enough that the server uses a second or more.
#
# Usage: scripts/bench-durability.sh [--duration SECONDS] [--rounds N] [--rate REQUESTS_PER_S] [--batch N] [--pipeline N] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

duration=5
rounds=5
rate=10000
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
  step "building millrace (release)"
  cargo build --release --quiet
fi
millrace="$root/target/release/millrace"

bench_redis bench-durability 21400 "AOF on, everysec"
masters=("$redis_port" $((redis_port + 1)) $((redis_port + 2)))
for p in "${masters[@]}"; do
  redis-cli -p "$p" config set auto-aof-rewrite-min-size 64gb > /dev/null
done

# redis_ticks: CPU ticks the three masters have used so far.
redis_ticks() {
  local total=0 p
  for p in "${masters[@]}"; do
    total=$((total + $(cpu_ticks "$(cat "$redis_dir/$p/redis.pid")")))
  done
  echo "$total"
}

# set_mode off|everysec|always: every master to it, once any rewrite the
# change starts has finished.
set_mode() {
  local p
  for p in "${masters[@]}"; do
    case "$1" in
      off) redis-cli -p "$p" config set appendonly no > /dev/null ;;
      *)
        redis-cli -p "$p" config set appendonly yes > /dev/null
        redis-cli -p "$p" config set appendfsync "$1" > /dev/null ;;
    esac
  done
  for p in "${masters[@]}"; do
    for _ in $(seq 1 300); do
      redis-cli -p "$p" info persistence | grep -q '^aof_rewrite_in_progress:0' \
        && ! redis-cli -p "$p" info persistence | grep -q '^aof_rewrite_scheduled:1' && break
      sleep 0.1
    done
  done
}

port=$(free_port)
# The server accepts the risk of the AOF-off runs; it is what is measured.
taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
  --redis-seeds "$seeds" --admin-listen "" --accept-unsafe-durability true \
  --max-backlog 100000000 --max-backlog-bytes 1073741824 > "$work/millrace.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_for_http "http://127.0.0.1:$port/livez"
url="http://127.0.0.1:$port"

args() {
  case "$1" in
    events) echo "--workload events --batch $batch" ;;
    kv-put) echo "--workload kv --read-ratio 0 --keys 1000 --value-bytes 100" ;;
  esac
}

results="$work/results.tsv"
: > "$results"
modes=(off everysec always)
workloads=(events kv-put)
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  for i in 0 1 2; do
    mode="${modes[$(( (i + round - 1) % 3 ))]}"
    set_mode "$mode"
    for workload in "${workloads[@]}"; do
      # shellcheck disable=SC2046
      set -- $(args "$workload")
      empty_queue
      taskset -c "$load_cpu" "$millrace" load "$url" "$@" -c 64 -p "$pipeline" -d 1s --max-error-ratio 1 > /dev/null
      before=$(cpu_ticks "$server_pid")
      redis_before=$(redis_ticks)
      taskset -c "$load_cpu" "$millrace" load "$url" "$@" -c 64 -p "$pipeline" \
        -d "${duration}s" --max-error-ratio 1 --json "$work/closed.json" > /dev/null
      after=$(cpu_ticks "$server_pid")
      redis_after=$(redis_ticks)
      empty_queue
      # The warm-up is its own run, so that the CPU read covers the measured
      # window only.
      taskset -c "$load_cpu" "$millrace" load "$url" "$@" -c 64 \
        -R "$rate" -d 1s --max-error-ratio 1 > /dev/null || [ $? -eq 1 ]
      open_before=$(cpu_ticks "$server_pid")
      open_redis_before=$(redis_ticks)
      taskset -c "$load_cpu" "$millrace" load "$url" "$@" -c 64 \
        -R "$rate" -d "${duration}s" --max-error-ratio 1 --json "$work/open.json" > /dev/null || [ $? -eq 1 ]
      open_after=$(cpu_ticks "$server_pid")
      open_redis_after=$(redis_ticks)
      line=$(python3 - "$work/closed.json" "$work/open.json" "$((after - before))" "$((redis_after - redis_before))" \
        "$((open_after - open_before))" "$((open_redis_after - open_redis_before))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
closed, opened = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
tck = int(sys.argv[7])
cpu, redis_cpu, open_cpu, open_redis_cpu = (int(x) / tck for x in sys.argv[3:7])
per = lambda n, s: round(n / s) if s else 0
answered, open_answered = closed["requests"]["answered"], opened["requests"]["answered"]
l = opened["latency_ms"]
errors = sum(r["errors"]["connect"] + r["requests"]["failed"] + r["errors"]["status"] for r in (closed, opened))
print("\t".join(str(x) for x in [round(closed["requests_per_s"]), cpu, per(answered, cpu), redis_cpu, per(answered, redis_cpu),
                                  errors, l["p50"], l["p99"], l["p99.9"], open_cpu, per(open_answered, open_cpu),
                                  open_redis_cpu, per(open_answered, open_redis_cpu)]))
PY
)
      printf '%s\t%s\t%s\n' "$mode" "$workload" "$line" >> "$results"
      IFS=$'\t' read -r rps _ per_cpu _ per_redis errors p50 p99 p999 _ open_per_cpu _ open_per_redis <<<"$line"
      printf '  %-8s %-7s %8s req/s  %9s req per server CPU-s  %9s per Redis CPU-s  errors %s  | at %s/s: %s per server CPU-s, %s per Redis CPU-s, p50 %s p99 %s p99.9 %s ms\n' \
        "$mode" "$workload" "$rps" "$per_cpu" "$per_redis" "$errors" "$rate" "$open_per_cpu" "$open_per_redis" "$p50" "$p99" "$p999"
    done
  done
done

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="$results_dir/${stamp}-${host}-durability"
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
    (mode, workload, rps, cpu, per_cpu, redis_cpu, per_redis, errors, p50, p99, p999,
     open_cpu, open_per_cpu, open_redis_cpu, open_per_redis) = line.rstrip("\n").split("\t")
    runs.append({"aof": mode, "workload": workload, "requests_per_second": int(rps), "server_cpu_seconds": float(cpu),
                 "requests_per_server_cpu_second": int(per_cpu), "redis_cpu_seconds": float(redis_cpu),
                 "requests_per_redis_cpu_second": int(per_redis), "errors": int(errors),
                 "open_loop_p50_ms": float(p50), "open_loop_p99_ms": float(p99), "open_loop_p999_ms": float(p999),
                 "open_loop_server_cpu_seconds": float(open_cpu), "open_loop_requests_per_server_cpu_second": int(open_per_cpu),
                 "open_loop_redis_cpu_seconds": float(open_redis_cpu),
                 "open_loop_requests_per_redis_cpu_second": int(open_per_redis)})
routes = {"events": f"POST /v1/events ({batch} FlatBuffers events per request)",
          "kv-put": "PUT /v1/kv/{key} (100-byte values, 1,000 keys)"}
modes = {"off": "AOF off", "everysec": "AOF, appendfsync everysec", "always": "AOF, appendfsync always"}
keys = ("requests_per_second", "requests_per_server_cpu_second", "requests_per_redis_cpu_second",
        "open_loop_p50_ms", "open_loop_p99_ms", "open_loop_p999_ms",
        "open_loop_requests_per_server_cpu_second", "open_loop_requests_per_redis_cpu_second")
summary, ratios = {}, {}
for workload in routes:
    summary[workload] = {}
    for mode in modes:
        mine = [r for r in runs if r["aof"] == mode and r["workload"] == workload]
        s = {k: statistics.median(r[k] for r in mine) for k in keys}
        s["errors"] = sum(r["errors"] for r in mine)
        summary[workload][mode] = s
    ratios[workload] = {}
    for key in ("open_loop_requests_per_server_cpu_second", "requests_per_server_cpu_second"):
        off = summary[workload]["off"][key]
        ratios[workload][key] = {mode: round(summary[workload][mode][key] / off, 3) if off else None
                                 for mode in ("everysec", "always")}
command = f"scripts/bench-durability.sh --duration {duration} --rounds {rounds} --rate {rate} --batch {batch}"
if pipeline != 1:
    command += f" --pipeline {pipeline}"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(), "method": {"routes": routes, "settings": modes, "server_cpu": server_cpu,
          "redis_and_load_cpu": load_cpu, "closed_loop": f"64 connections, depth {pipeline}",
          "open_loop_rate_requests_per_second": rate, "rounds": rounds, "duration_seconds": duration},
          "summary": summary, "over_aof_off": ratios, "runs": runs}
json.dump(report, open(base + ".json", "w"), indent=2)
m = report["machine"]
lines = [f"Server on CPU {server_cpu}, Redis Cluster (3 masters) and millrace load on CPU {load_cpu}, medians of {rounds} "
         f"rounds (settings in rotating order); {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.", f"Command: `{command}`", "",
         f"| route | Redis | at {rate}/s: req per server CPU-s | req per Redis CPU-s | p50 ms | p99 ms | p99.9 ms "
         f"| closed loop (64 conns, depth {pipeline}): req/s | req per server CPU-s | req per Redis CPU-s | errors |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for workload, by_mode in summary.items():
    for mode, s in by_mode.items():
        lines.append(f"| {routes[workload]} | {modes[mode]} | {s['open_loop_requests_per_server_cpu_second']:,.0f} | "
                     f"{s['open_loop_requests_per_redis_cpu_second']:,.0f} | {s['open_loop_p50_ms']:.3f} | {s['open_loop_p99_ms']:.3f} | "
                     f"{s['open_loop_p999_ms']:.3f} | {s['requests_per_second']:,.0f} | {s['requests_per_server_cpu_second']:,.0f} | "
                     f"{s['requests_per_redis_cpu_second']:,.0f} | {s['errors']} |")
lines.append("")
for workload, by_key in ratios.items():
    at_rate, closed = by_key["open_loop_requests_per_server_cpu_second"], by_key["requests_per_server_cpu_second"]
    lines.append(f"- {routes[workload]}, requests per server CPU-second over AOF off at {rate}/s: everysec "
                 f"**{at_rate['everysec']}x**, always **{at_rate['always']}x** (closed loop: everysec {closed['everysec']}x, "
                 f"always {closed['always']}x)")
open(base + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "written: $base.json $base.md"
