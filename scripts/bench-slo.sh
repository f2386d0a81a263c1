#!/usr/bin/env bash
# scripts/bench-slo.sh: the highest open-loop rate at which one millrace
# executor keeps a latency objective, found by `millrace load --slo`, for
#   - GET /plaintext, and
#   - GET /v1/kv/{key}, cache hits over 1,000 keys (zipf 0.99),
# with its latency-against-throughput curve. The server runs pinned to
# SERVER_CPU; the Redis Cluster (3 masters) and millrace load share
# LOAD_CPU, as in the other benchmarks. `millrace plan --slo-from` reads the
# GET figure as the reads one core serves within the objective.
# Results: benches/results/<date>-<host>-slo-{plaintext,kv-get}.{json,svg}
# and <date>-<host>-slo.md.
#
# Usage: scripts/bench-slo.sh [--slo OBJECTIVE] [--duration SECONDS] [--no-build]
# Defaults: --slo 'p99<1ms', 3 s per step after 1 s of warm-up.
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

slo='p99<1ms'
duration=3
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --slo) slo="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
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
  cargo build --release --quiet --bin millrace
fi
millrace="$root/target/release/millrace"

bench_redis bench-slo 20600

port=$(free_port)
step "millrace serve on CPU $server_cpu"
taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
  --redis-seeds "$seeds" --admin-listen "" > "$work/server.log" 2>&1 &
pids+=("$!")
wait_for_http "http://127.0.0.1:$port/readyz"
url="http://127.0.0.1:$port"
"$millrace" load "$url" --cores "$load_cpu," --workload kv --read-ratio 0 --keys 1000 \
  --value-bytes 100 -c 16 -n 20000 --max-error-ratio 0 > /dev/null

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
out="$results_dir/${stamp}-${host}-slo"
for name in plaintext kv-get; do
  case "$name" in
    plaintext) set -- "$url/plaintext" --rate-range 10000..800000 ;;
    kv-get) set -- "$url" --workload kv --read-ratio 1 --keys 1000 --key-dist zipf:0.99 --rate-range 5000..400000 ;;
  esac
  step "$name: the highest rate with $slo"
  # Status 1: no rate met the objective; the JSON says so.
  "$millrace" load "$@" --cores "$load_cpu," -c 64 --warmup 1s -d "${duration}s" --slo "$slo" \
    --json "$out-$name.json" --plot "$out-$name.svg" || [ $? -eq 1 ]
done

python3 - "$out" "$slo" "$duration" "$server_cpu" "$load_cpu" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from bench_report import machine
out, slo, duration, server_cpu, load_cpu = sys.argv[1:6]
m = machine()
lines = [f"The highest open-loop rate one millrace executor (CPU {server_cpu}) answers with {slo} (corrected latency), "
         f"found by `millrace load --slo` on CPU {load_cpu} (shared with a 3-master Redis Cluster), 64 connections, "
         f"{duration} s per step after 1 s of warm-up; {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.",
         f"Command: `scripts/bench-slo.sh --slo '{slo}' --duration {duration}`", "",
         "| route | met at req/s | missed at req/s | steps | not measured (generator behind) | curve |",
         "|---|---:|---:|---:|---:|---|"]
routes = {"plaintext": "GET /plaintext", "kv-get": "GET /v1/kv/{key} (cache hits)"}
for name, route in routes.items():
    r = json.load(open(f"{out}-{name}.json"))
    met = f"{r['best_rate_per_s']:,.0f}" if r["best_rate_per_s"] else "none"
    missed = f"{r['first_missed_per_s']:,.0f}" if r["first_missed_per_s"] else "none"
    if r.get("stopped_by_generator"):
        missed += " (the generator fell behind: the knee is higher)"
    behind = sum(1 for s in r["steps"] if s["verdict"] == "not_measured")
    lines.append(f"| {route} | {met} | {missed} | {len(r['steps'])} | {behind} | `{out.split('/')[-1]}-{name}.svg` |")
lines += ["", "Each step (offered, answered, corrected p50 / p99 / p99.9 ms, verdict):", ""]
for name, route in routes.items():
    r = json.load(open(f"{out}-{name}.json"))
    lines.append(f"{route}:")
    lines.append("")
    lines.append("| offered/s | answered/s | p50 | p99 | p99.9 | verdict |")
    lines.append("|---:|---:|---:|---:|---:|---|")
    for s in sorted(r["steps"], key=lambda s: s["rate_per_s"]):
        l = s["latency_ms"]
        lines.append(f"| {s['rate_per_s']:,.0f} | {s['answered_per_s']:,.0f} | {l['p50']:.3f} | {l['p99']:.3f} | "
                     f"{l['p99.9']:.3f} | {s['verdict']}{': ' + s['why'] if s['why'] else ''} |")
    lines.append("")
open(out + ".md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
echo "written: $out.md $out-*.json $out-*.svg"
