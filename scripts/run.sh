#!/usr/bin/env bash
# scripts/run.sh: millrace's main job on a fresh Debian machine, start to end.
#
# Builds millrace in release, checks the host (millrace doctor), starts the
# server with one executor pinned to SERVER_CPU, drives GET /plaintext from
# LOAD_CPU with wrk (64 connections, pipeline depth 1 then 16, DURATION
# seconds each), prints the latency percentiles, then stops the server with
# SIGTERM and shows that it drained cleanly.
#
# The full side-by-side benchmark (millrace vs may_minihttp vs nginx, requests
# per CPU-second, idle-connection memory) is scripts/bench-http.sh; its
# results are under benches/results/.
#
# Usage: scripts/run.sh [--duration SECONDS]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1)
set -euo pipefail
duration=10
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
server_cpu="${SERVER_CPU:-0}"
load_cpu="${LOAD_CPU:-1}"
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages wrk curl python3
step "building millrace (release)"
cargo build --release --locked --quiet
millrace=target/release/millrace

step "millrace doctor"
"$millrace" doctor

port=$(free_port)
step "millrace serve on CPU $server_cpu, port $port"
taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$server_cpu," &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
wait_for_http "http://127.0.0.1:$port/readyz"

work="$(mktemp -d)"
table="$work/table"
printf '| depth | requests/s | p50 | p75 | p90 | p99 | errors |\n|---:|---:|---:|---:|---:|---:|---|\n' > "$table"
for depth in 1 16; do
  step "wrk: 64 connections, depth $depth, ${duration} s, on CPU $load_cpu"
  out=$(taskset -c "$load_cpu" wrk -t1 -c64 -d"${duration}s" --latency -s scripts/pipeline.lua \
    "http://127.0.0.1:$port/plaintext" -- "$depth")
  echo "$out"
  awk -v depth="$depth" '
    /^Requests\/sec:/ { rps = $2 }
    /^ +50%/ { p50 = $2 } /^ +75%/ { p75 = $2 } /^ +90%/ { p90 = $2 } /^ +99%/ { p99 = $2 }
    /Non-2xx|Socket errors/ { errors = errors $0 }
    END {
      # wrk records one latency per pipelined batch, so its percentiles only hold at depth 1.
      if (depth != 1) { p50 = p75 = p90 = p99 = "n/a" }
      printf "| %s | %s | %s | %s | %s | %s | %s |\n", depth, rps, p50, p75, p90, p99, (errors ? errors : "none")
    }
  ' <<<"$out" >> "$table"
done

step "SIGTERM: drain and exit"
kill -TERM "$server"
wait "$server" && echo "millrace exited 0"
trap - EXIT

step "GET /plaintext on one millrace executor (wrk: closed loop, latency not corrected for coordinated omission; wrk cannot time pipelined requests)"
cat "$table"
rm -rf "$work"
echo
echo "Side by side with may_minihttp and nginx: scripts/bench-http.sh (results in benches/results/)."
