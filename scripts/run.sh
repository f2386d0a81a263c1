#!/usr/bin/env bash
# scripts/run.sh: millrace's main job on a fresh Debian machine, start to end.
#
# Builds millrace in release, checks the host (millrace doctor), starts the
# server with one executor pinned to SERVER_CPU, drives GET /plaintext from
# LOAD_CPU with millrace load (64 connections, closed loop at pipeline depth 1
# then 16, then open loop at half the depth-1 rate, DURATION seconds each
# after a 1 s warm-up), prints the latency percentiles, then stops the server
# with SIGTERM and shows that it drained cleanly.
#
# Side by side with peers: scripts/bench-http.sh (servers) and
# scripts/bench-load.sh (load generators); results under benches/results/.
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

need_packages curl python3
step "building millrace (release)"
cargo build --release --locked --quiet
millrace=target/release/millrace

step "millrace doctor"
"$millrace" doctor

port=$(free_port)
step "millrace serve on CPU $server_cpu, port $port"
taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$server_cpu," &
server=$!
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
wait_for_http "http://127.0.0.1:$port/readyz"

url="http://127.0.0.1:$port/plaintext"
# load NAME ARGS...: one millrace load run on the load CPU, its JSON kept as NAME.
load() {
  local name="$1"; shift
  "$millrace" load "$url" --cores "$load_cpu," -c 64 -d "${duration}s" --warmup 1s \
    --json "$work/$name.json" "$@"
}
step "millrace load: closed loop, 64 connections, depth 1, ${duration} s, on CPU $load_cpu"
load depth-1 -p 1
step "millrace load: closed loop, 64 connections, depth 16"
load depth-16 -p 16
rate=$(python3 -c 'import json, sys; print(max(1, int(json.load(open(sys.argv[1]))["requests_per_s"] / 2)))' "$work/depth-1.json")
step "millrace load: open loop at $rate requests/s (half the depth-1 rate), 64 connections"
load open-loop -R "$rate"

step "SIGTERM: drain and exit"
kill -TERM "$server"
wait "$server" && echo "millrace exited 0"

step "GET /plaintext on one millrace executor (latency per request; open loop corrected for coordinated omission)"
python3 - "$work" <<'PY'
import json, os, sys
print("| run | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name in ("depth-1", "depth-16", "open-loop"):
    r = json.load(open(os.path.join(sys.argv[1], name + ".json")))
    l = r["latency_ms"]
    errors = sum(v for v in r["errors"].values())
    print(f"| {name} | {r['requests_per_s']:,.0f} | {l['p50']:.3f} | {l['p90']:.3f} | {l['p99']:.3f} "
          f"| {l['p99.9']:.3f} | {l['max']:.3f} | {errors} |")
PY
echo
echo "Side by side with peers: scripts/bench-http.sh and scripts/bench-load.sh (results in benches/results/)."
