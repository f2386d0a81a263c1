#!/usr/bin/env bash
# scripts/bench.sh: every benchmark in one run, side by side with its peers,
# with pictures. Builds millrace and the peers in release, then runs, each
# with the server pinned to SERVER_CPU and the load generator (and any
# Redis Cluster) to LOAD_CPU, each starting its own Redis Cluster or
# PostgreSQL as it needs:
#   - raw HTTP: millrace /plaintext vs may_minihttp vs nginx, depth 1 and 16
#     (scripts/bench-http.sh);
#   - the API: POST /v1/events, PUT /v1/kv and GET /v1/kv hits vs the axum +
#     redis-rs peer, depth 1 and 16 (scripts/bench-api.sh);
#   - write-back: rows/s through the database core vs a direct binary COPY
#     and vs multi-row INSERT (scripts/bench-writeback.sh);
#   - latency under load: open loop at 25/50/75/90% of each HTTP server's
#     maximum, p50/p99/p99.9 (scripts/bench-latency.sh);
#   - HTTPS: millrace's TLS listener vs nginx with TLS, keep-alive and
#     handshakes, and TLS on the Redis links (scripts/bench-tls.sh).
#
# Output, besides each part's own files in benches/results/<date>-<host>/:
#   benches/results/<date>-<host>.json   every figure, the machine, and the
#                                        plan_inputs millrace plan --from reads
#   benches/results/latest.json          the same
#   benches/results/<date>-<host>.md     the tables
#   benches/results/<date>-<host>-*.svg  requests per CPU-second per server,
#                                        latency by percentile per server and load
#
# Usage: scripts/bench.sh [--quick] [--no-build] [--report-only]
#   --quick        fewer rounds and shorter runs (about 15 minutes instead of 40)
#   --report-only  no runs: the report, plots included, from today's part files
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1)
set -euo pipefail

quick=0
build=1
runs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --no-build) build=0; shift ;;
    --report-only) runs=0; build=0; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

if [ "$quick" = 1 ]; then rounds=2; duration=3; rows=100000; else rounds=5; duration=5; rows=200000; fi
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="benches/results/${stamp}-${host}"
# Each part's files go in a directory of this run's own, not beside the
# parts' separate runs.
export RESULTS_DIR="$base"

need_packages wrk nginx-light curl python3 redis-server redis-tools postgresql postgresql-client pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building millrace and the peers (release)"
  cargo build --release --locked --quiet
  cargo build --release --quiet --manifest-path benches/peers/may-minihttp/Cargo.toml
  cargo build --release --quiet --manifest-path benches/peers/axum-redis/Cargo.toml
fi
millrace="$root/target/release/millrace"

if [ "$runs" = 1 ]; then
  step "raw HTTP: millrace, may_minihttp, nginx"
  scripts/bench-http.sh --no-build --rounds "$rounds" --duration "$duration"
  step "the API against axum + redis-rs, one request at a time per connection"
  scripts/bench-api.sh --no-build --rounds "$rounds" --duration "$duration"
  step "the API against axum + redis-rs, 16 pipelined per connection"
  scripts/bench-api.sh --no-build --rounds "$rounds" --duration "$duration" --pipeline 16
  step "write-back against COPY and INSERT"
  scripts/bench-writeback.sh --no-build --rounds "$rounds" --rows "$rows"
  step "latency under load"
  scripts/bench-latency.sh --no-build --duration "$duration"
  step "HTTPS: millrace, nginx; TLS to Redis"
  scripts/bench-tls.sh --no-build --rounds "$rounds" --duration "$duration" --redis-tls
fi

command="scripts/bench.sh"
if [ "$quick" = 1 ]; then command="$command --quick"; fi
step "the report: $base.json, $base.md, $base-*.svg"
python3 - "$base" "$command" <<'PY'
import glob, json, os, sys
sys.path.insert(0, "scripts")
from bench_report import machine
base, command = sys.argv[1], sys.argv[2]
parts = os.path.join(base, os.path.basename(base))
part = lambda name: json.load(open(f"{parts}-{name}.json"))
http, api, api16, writeback, latency = part("http"), part("api"), part("api-p16"), part("writeback"), part("latency")
# The Redis client's figures come from its own run (scripts/bench-redis.sh), the newest there is.
redis_files = sorted(glob.glob("benches/results/*-redis.json"))
redis = json.load(open(redis_files[-1])) if redis_files else None

def source(part_json, what):
    return f"{what}: {part_json['command']}"

kv = api["summary"]
plan_inputs = {
    "reads_per_core_second": {"value": kv["kv-get"]["millrace"]["requests_per_server_cpu_second"],
                              "source": source(api, "GET /v1/kv hits per server CPU-second, depth 1")},
    "writes_per_core_second": {"value": kv["kv-put"]["millrace"]["requests_per_server_cpu_second"],
                               "source": source(api, "PUT /v1/kv per server CPU-second, depth 1")},
    "writeback_rows_per_core_second": {"value": writeback["median"]["core_rows_per_second"],
                                       "source": source(writeback, "database core rows/s")},
    "p99_ms": {"value": kv["kv-put"]["millrace"]["open_loop_p99_ms"],
               "source": source(api, "PUT /v1/kv open-loop p99")},
}
if redis:
    plan_inputs["redis_ops_per_master_second"] = {
        "value": redis["summary"]["millrace"]["median_ops_per_second"],
        "source": source(redis, f"Redis ops/s, {redis['method']['cluster']} ({os.path.basename(redis_files[-1])})")}
report = {"date": http["date"], "command": command, "machine": machine(), "http": http, "api": api,
          "api_pipelined": api16, "writeback": writeback, "latency": latency, "plan_inputs": plan_inputs}
# A report of runs from before the HTTPS part has none.
if os.path.exists(f"{parts}-tls.json"):
    report["tls"] = part("tls")
json.dump(report, open(base + ".json", "w"), indent=2)
json.dump(report, open("benches/results/latest.json", "w"), indent=2)
sections = [("Raw HTTP", "http"), ("The API, depth 1", "api"), ("The API, depth 16", "api-p16"),
            ("Write-back", "writeback"), ("Latency under load", "latency")]
m = report["machine"]
lines = [f"# millrace benchmark report, {report['date']}", "",
         f"{m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}. Command: `{command}`.", ""]
if "tls" in report:
    sections.append(("HTTPS", "tls"))
for title, name in sections:
    lines += [f"## {title}", "", open(f"{parts}-{name}.md").read().strip(), ""]
lines += ["## Plots", "", f"![requests per server CPU-second]({os.path.basename(base)}-per-cpu.svg)", ""]
for server in ("millrace", "may_minihttp", "nginx"):
    lines.append(f"![latency by percentile, {server}]({os.path.basename(base)}-latency-{server}.svg)")
open(base + ".md", "w").write("\n".join(lines) + "\n")
# What the plots need, for the shell to draw.
bars = []
for row in http["summary"]:
    if row["depth"] == 16:
        bars.append(f"{row['server']} /plaintext d16={row['median_requests_per_cpu_second']}")
for route in ("kv-get", "kv-put", "events"):
    for server in ("millrace", "axum-redis"):
        bars.append(f"{server} {route} d16={api16['summary'][route][server]['requests_per_server_cpu_second']}")
open(base + ".bars", "w").write("\n".join(bars) + "\n")
PY
mapfile -t bars < "$base.bars"
rm -f "$base.bars"
"$millrace" plot bars --title "Requests per server CPU-second (depth 16)" \
  --y-label "requests per server CPU-second" --out "$base-per-cpu.svg" "${bars[@]}"
for server in millrace may_minihttp nginx; do
  curves=()
  for percent in 25 50 75 90; do
    curves+=("$percent% of maximum=$base/${stamp}-${host}-latency/$server-$percent.hgrm")
  done
  "$millrace" plot percentiles --title "$server: latency by percentile, GET /plaintext open loop" \
    --out "$base-latency-$server.svg" "${curves[@]}"
done
echo
cat "$base.md"
echo "written: $base.json (and benches/results/latest.json), $base.md, $base-*.svg"
