#!/usr/bin/env bash
# scripts/run.sh: millrace's main job on a fresh Debian machine, start to end.
#
# Builds millrace in release, checks the host (millrace doctor), brings up
# the local stack (a 3-master Redis Cluster and a PostgreSQL under var/run),
# starts the server with one executor pinned to SERVER_CPU and its database
# core, and drives it from LOAD_CPU with millrace load, DURATION seconds each
# after a 1 s warm-up: GET /plaintext closed loop at pipeline depth 1 and 16
# and open loop at half the depth-1 rate (64 connections), and over HTTPS
# (its TLS listener, with a certificate scripts/tls-certs.sh makes) at
# depth 1; then the API,
# open loop: GET/PUT /v1/kv (90% reads over 10,000 keys, 5,000 requests/s)
# and POST /v1/events (5,000 posts/s of 10 FlatBuffers events). It prints the
# latency percentiles, waits for the write-back queue to drain, counts the
# rows that reached PostgreSQL, stops the server with SIGTERM (it drains
# cleanly) and takes the stack down.
#
# The full report, side by side with peers: scripts/bench.sh; results under
# benches/results/ (latest.json, and a .md per run).
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

need_packages curl python3 redis-server redis-tools postgresql postgresql-client pkg-config libssl-dev
step "building millrace (release)"
cargo build --release --locked --quiet
millrace=target/release/millrace

step "millrace doctor"
"$millrace" doctor

stack="$PWD/var/run"
# Bus ports are +10000: kept below the ephemeral range (32768 and up).
redis_port=$((22100 + RANDOM % 600))
pg_port=$((redis_port + 100))
make_work
cleanup() {
  stop_work
  scripts/postgres.sh stop --dir "$stack/postgres" --port "$pg_port" > /dev/null 2>&1 || true
  scripts/redis-cluster.sh stop --dir "$stack/redis" > /dev/null 2>&1 || true
}
trap cleanup EXIT
step "the local stack: Redis Cluster, PostgreSQL"
seeds=$(scripts/redis-cluster.sh start --dir "$stack/redis" --port "$redis_port")
postgres_url=$(scripts/postgres.sh start --dir "$stack/postgres" --port "$pg_port")

port=$(free_port)
tls_port=$(free_port)
admin_port=$(free_port)
scripts/tls-certs.sh var/tls
step "millrace serve on CPU $server_cpu, port $port, HTTPS $tls_port (admin: $admin_port), with its database core"
MILLRACE_POSTGRES_URL="$postgres_url" "$millrace" serve --listen "127.0.0.1:$port" \
  --tls-listen "127.0.0.1:$tls_port" --tls-cert-file var/tls/server.pem --tls-key-file var/tls/server.key \
  --admin-listen "127.0.0.1:$admin_port" --cores "$server_cpu," --redis-seeds "$seeds" &
server=$!
pids+=("$server")
wait_for_http "http://127.0.0.1:$port/readyz"

url="http://127.0.0.1:$port/plaintext"
# load NAME ARGS...: one millrace load run on the load CPU, its JSON kept as NAME.
load() {
  local name="$1"; shift
  # Status 1: errors, or the generator fell behind; the table says which.
  "$millrace" load "$url" --cores "$load_cpu," -c 64 -d "${duration}s" --warmup 1s \
    --json "$work/$name.json" "$@" || [ $? -eq 1 ]
}
step "millrace load: closed loop, 64 connections, depth 1, ${duration} s, on CPU $load_cpu"
load depth-1 -p 1
step "millrace load: closed loop, 64 connections, depth 16"
load depth-16 -p 16
rate=$(python3 -c 'import json, sys; print(max(1, int(json.load(open(sys.argv[1]))["requests_per_s"] / 2)))' "$work/depth-1.json")
step "millrace load: open loop at $rate requests/s (half the depth-1 rate), 64 connections"
load open-loop -R "$rate"
step "millrace load: HTTPS, closed loop, 64 connections, depth 1 (certificate verified against var/tls/ca.pem)"
url="https://127.0.0.1:$tls_port/plaintext"
load https-depth-1 -p 1 --ca-file var/tls/ca.pem
step "millrace load: GET/PUT /v1/kv, 90% reads over 10,000 keys, 5,000 requests/s, open loop, 16 connections"
"$millrace" load "http://127.0.0.1:$port" --workload kv --read-ratio 0.9 --keys 10000 \
  --cores "$load_cpu," -c 16 -R 5000 -d "${duration}s" --warmup 1s --json "$work/kv.json" || [ $? -eq 1 ]
step "millrace load: POST /v1/events, 5,000 posts/s of 10 events, open loop, 16 connections"
"$millrace" load "http://127.0.0.1:$port" --workload events --batch 10 --cores "$load_cpu," \
  -c 16 -R 5000 -d "${duration}s" --warmup 1s --json "$work/events.json" || [ $? -eq 1 ]

step "the write-back queue drains into PostgreSQL (GET /v1/stats)"
stats() { curl -fsS "http://127.0.0.1:$port/v1/stats"; }
for _ in $(seq 1 120); do
  stats | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["backlog"] != 0)' && break
  sleep 0.5
done
echo "stats: $(stats)"
echo "PostgreSQL: $(psql "$postgres_url" -Atc 'select count(*) from events') events, $(psql "$postgres_url" -Atc 'select count(*) from kv') keys"

step "SIGTERM: drain and exit"
kill -TERM "$server"
wait "$server" && echo "millrace exited 0"

step "one millrace executor (latency per request; open loop corrected for coordinated omission; kv: 90% GET; events: posts of 10)"
python3 - "$work" <<'PY'
import json, os, sys
print("| run | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | generator |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
for name in ("depth-1", "depth-16", "open-loop", "https-depth-1", "kv", "events"):
    r = json.load(open(os.path.join(sys.argv[1], name + ".json")))
    l = r["latency_ms"]
    errors = sum(v for v in r["errors"].values())
    g = r["generator"]
    kept_up = "behind: latencies invalid" if g["behind"] else f"kept up ({g['cpu_busy'] * 100:.0f}% CPU)"
    print(f"| {name} | {r['requests_per_s']:,.0f} | {l['p50']:.3f} | {l['p90']:.3f} | {l['p99']:.3f} "
          f"| {l['p99.9']:.3f} | {l['max']:.3f} | {errors} | {kept_up} |")
PY
echo
echo "The full report, side by side with peers: scripts/bench.sh (latest: benches/results/latest.json and benches/results/*.md)."
