#!/usr/bin/env bash
# scripts/bench-http.sh: millrace GET /plaintext against may_minihttp and
# nginx, in one run, on this machine.
#
# Each server runs alone, pinned to SERVER_CPU with one worker (one executor),
# and wrk runs pinned to LOAD_CPU with CONNECTIONS connections at pipeline
# depth 1 and 16 for DURATION seconds (after a 1 s warm-up). For each run it
# prints requests/s and requests per server CPU-second: utime+stime of the
# server's processes from /proc over exactly the measured window. At depth 1
# the load generator, not the server, limits raw requests/s, so the per-CPU
# figure is the one to compare. This machine is shared and noisy, so the
# servers take turns for ROUNDS rounds (a fresh process each time, the order
# rotating) and the report gives each figure's median. Then it opens 10,000
# idle keep-alive connections to a fresh single-core millrace and prints the
# RSS they add.
#
# Results: benches/results/<date>-<host>-http.json and .md
#
# Usage: scripts/bench-http.sh [--duration SECONDS] [--connections N] [--rounds N] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

duration=5
connections=64
rounds=3
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
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

need_packages wrk nginx-light curl python3 pkg-config libssl-dev
build_with_may_peer

make_work
trap stop_work EXIT

results="$work/results.tsv"
: > "$results"

# bench NAME PID URL: warm up, then measure depth 1 and 16.
bench() {
  local name="$1" pid="$2" url="$3" depth before after out
  taskset -c "$load_cpu" wrk -t1 -c"$connections" -d1s -s scripts/pipeline.lua "$url" -- 1 > /dev/null
  for depth in 1 16; do
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"${duration}s" -s scripts/pipeline.lua "$url" -- "$depth")
    after=$(cpu_ticks "$pid")
    local rps errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$depth" "$rps" "$((after - before))" "$errors" >> "$results"
    printf '  %-14s depth %-2s %12s req/s  server CPU %5.2f s  %s\n' "$name" "$depth" "$rps" \
      "$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" 'BEGIN { print t / hz }')" "$errors"
  done
}

servers=(millrace may_minihttp nginx)
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  for i in 0 1 2; do
    name="${servers[$(( (i + round - 1) % 3 ))]}"
    port=$(free_port)
    start_server "$name" "$port"
    bench "$name" "$server_pid" "http://127.0.0.1:$port/plaintext"
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  done
done

step "10,000 idle keep-alive connections to one millrace executor"
port=$(free_port)
taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
  --admin-listen "" --public-metrics true > "$work/millrace-idle.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_for_http "http://127.0.0.1:$port/livez"
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
rss_before=$(rss_kib "$server_pid")
mkfifo "$work/idle.ready"
taskset -c "$load_cpu" python3 scripts/idle_connections.py 127.0.0.1 "$port" 10000 > "$work/idle.ready" &
idle_pid=$!
pids+=("$idle_pid")
read -r idle_line < "$work/idle.ready"
rss_after=$(rss_kib "$server_pid")
open_now=$(curl -s "http://127.0.0.1:$port/metrics" | awk -F' ' '/^millrace_connections_open/ {print $2}')
kill "$idle_pid" 2>/dev/null || true
echo "  $idle_line; server RSS ${rss_before} KiB -> ${rss_after} KiB (open connections: $open_now)"

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="$results_dir/${stamp}-${host}-http"
python3 scripts/bench_report.py \
  --results "$results" --json "$base.json" --markdown "$base.md" \
  --duration "$duration" --connections "$connections" --rounds "$rounds" \
  --server-cpu "$server_cpu" --load-cpu "$load_cpu" --clk-tck "$(getconf CLK_TCK)" \
  --idle-connections 10000 --rss-before-kib "$rss_before" --rss-after-kib "$rss_after" \
  --command "scripts/bench-http.sh --duration $duration --connections $connections --rounds $rounds"
echo
cat "$base.md"
echo "written: $base.json $base.md"
