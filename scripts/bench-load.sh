#!/usr/bin/env bash
# scripts/bench-load.sh: millrace load against wrk (throughput and CPU) and
# against oha (open-loop latency), in one run, on this machine.
#
# Servers: millrace GET /plaintext and nginx, each alone with one worker,
# pinned to SERVER_CPU. Generators: wrk and millrace load, one thread pinned
# to LOAD_CPU, CONNECTIONS connections, pipeline depth 1 and 16 (wrk uses
# scripts/pipeline.lua at depth 16, and no script at depth 1), DURATION
# seconds each after a 1 s warm-up run. For every run: the requests/s the
# generator reports and the CPU time it used (utime+stime, /usr/bin/time).
# Then, at each of RATES requests/s (open loop, CONNECTIONS connections), oha
# with --latency-correction and millrace load --rate on the same server: p50
# and p99 side by side. Servers, generators and their order rotate over ROUNDS
# rounds; the report gives medians (every run is kept in the JSON).
#
# Results: <RESULTS_DIR>/<date>-<host>-load.json and .md
#
# Usage: scripts/bench-load.sh [--duration SECONDS] [--connections N] [--rounds N] [--rates "R1 R2 ..."] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
# Needs oha (cargo install oha --locked); installed when missing, which takes a while.
set -euo pipefail

duration=5
connections=64
rounds=3
rates="1000 5000 20000"
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --rates) rates="$2"; shift 2 ;;
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

need_packages wrk nginx-light curl python3 time pkg-config libssl-dev
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v oha > /dev/null; then
  step "installing oha from crates.io"
  cargo install oha --locked --quiet
fi
if [ "$build" = 1 ]; then
  step "building millrace (release)"
  cargo build --release --quiet
fi
millrace="$root/target/release/millrace"

make_work
trap stop_work EXIT

throughput="$work/throughput.tsv"
latency="$work/latency.tsv"
: > "$throughput"
: > "$latency"

# timed FILE CMD...: run CMD pinned to the load CPU; FILE gets "cpu_seconds wall_seconds".
timed() {
  local file="$1"; shift
  /usr/bin/time -f '%U %S %e' -o "$file.time" taskset -c "$load_cpu" "$@"
  awk '{ printf "%.3f %.3f\n", $1 + $2, $3 }' "$file.time" > "$file"
}

# generate NAME DEPTH URL: one measured run; prints requests/s.
generate() {
  local name="$1" depth="$2" url="$3" script=()
  case "$name" in
    wrk)
      [ "$depth" -gt 1 ] && script=(-s scripts/pipeline.lua)
      wrk -t1 -c"$connections" -d1s "${script[@]}" "$url" -- "$depth" > /dev/null
      timed "$work/t" wrk -t1 -c"$connections" -d"${duration}s" "${script[@]}" "$url" -- "$depth" > "$work/out"
      awk '/^Requests\/sec:/ {print $2}' "$work/out" ;;
    millrace_load)
      taskset -c "$load_cpu" "$millrace" load "$url" -c "$connections" -p "$depth" -d 1s > /dev/null
      timed "$work/t" "$millrace" load "$url" -c "$connections" -p "$depth" -d "${duration}s" \
        --max-error-ratio 1 --json "$work/out.json" > /dev/null
      python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["requests_per_s"])' "$work/out.json" ;;
  esac
}

# open_loop NAME URL RATE: achieved requests/s, p50, p99 and max in ms.
open_loop() {
  local name="$1" url="$2" rate="$3"
  case "$name" in
    oha)
      taskset -c "$load_cpu" oha -z "${duration}s" -c "$connections" -q "$rate" --latency-correction \
        --no-tui --output-format json "$url" > "$work/oha.json"
      python3 - "$work/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
print(d["summary"]["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3, d["summary"]["slowest"] * 1e3)
PY
      ;;
    millrace_load)
      taskset -c "$load_cpu" "$millrace" load "$url" -c "$connections" -R "$rate" -d "${duration}s" \
        --max-error-ratio 1 --json "$work/open.json" > /dev/null || [ $? -eq 1 ]
      python3 - "$work/open.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["requests_per_s"], d["latency_ms"]["p50"], d["latency_ms"]["p99"], d["latency_ms"]["max"])
PY
      ;;
  esac
}

servers=(millrace nginx)
generators=(wrk millrace_load)
latency_tools=(oha millrace_load)
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  for i in 0 1; do
    server="${servers[$(( (i + round - 1) % 2 ))]}"
    port=$(free_port)
    start_server "$server" "$port"
    url="http://127.0.0.1:$port/plaintext"
    for depth in 1 16; do
      for j in 0 1; do
        gen="${generators[$(( (j + round - 1) % 2 ))]}"
        rps=$(generate "$gen" "$depth" "$url")
        read -r cpu wall < "$work/t"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$depth" "$gen" "$rps" "$cpu" "$wall" >> "$throughput"
        printf '  %-8s depth %-2s %-14s %12.0f req/s  generator CPU %6.2f s in %5.2f s\n' \
          "$server" "$depth" "$gen" "$rps" "$cpu" "$wall"
      done
    done
    for rate in $rates; do
      for j in 0 1; do
        tool="${latency_tools[$(( (j + round - 1) % 2 ))]}"
        read -r achieved p50 p99 max < <(open_loop "$tool" "$url" "$rate")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$rate" "$tool" "$achieved" "$p50" "$p99" "$max" >> "$latency"
        printf '  %-8s %-14s at %6s req/s: achieved %8.0f  p50 %7.3f ms  p99 %7.3f ms  max %8.3f ms\n' \
          "$server" "$tool" "$rate" "$achieved" "$p50" "$p99" "$max"
      done
    done
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  done
done

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="$results_dir/${stamp}-${host}-load"
python3 scripts/bench_load_report.py \
  --throughput "$throughput" --latency "$latency" --json "$base.json" --markdown "$base.md" \
  --duration "$duration" --connections "$connections" --rounds "$rounds" --rates "$rates" \
  --server-cpu "$server_cpu" --load-cpu "$load_cpu" --oha-version "$(oha --version)" \
  --command "scripts/bench-load.sh --duration $duration --connections $connections --rounds $rounds --rates '$rates'"
echo
cat "$base.md"
echo "written: $base.json $base.md"
