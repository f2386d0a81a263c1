#!/usr/bin/env bash
# scripts/bench-latency.sh: latency under load. For millrace, may_minihttp
# and nginx serving GET /plaintext (one worker each, pinned to SERVER_CPU),
# millrace load on LOAD_CPU first measures the server's maximum (closed
# loop, 64 connections, depth 1, DURATION seconds), then runs open loop at
# 25, 50, 75 and 90% of that maximum for DURATION seconds each (after a 1 s
# warm-up), corrected for coordinated omission. It prints p50, p99 and
# p99.9 for each and keeps each run's latency distribution (.hgrm). Each
# run also records the host's steal time (/proc/stat, in clock ticks): on a
# VM, a stall with steal beside it is the hypervisor's, not the server's.
#
# Results: benches/results/<date>-<host>-latency.json and .md, and the
# distributions in benches/results/<date>-<host>-latency/SERVER-PERCENT.hgrm
#
# Usage: scripts/bench-latency.sh [--duration SECONDS] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

duration=5
build=1
while [ $# -gt 0 ]; do
  case "$1" in
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

need_packages nginx-light curl python3 pkg-config libssl-dev
build_with_may_peer

make_work
trap stop_work EXIT

stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="$results_dir/${stamp}-${host}-latency"
mkdir -p "$base"
results="$work/results.tsv"
: > "$results"

for name in millrace may_minihttp nginx; do
  step "$name"
  port=$(free_port)
  start_server "$name" "$port"
  url="http://127.0.0.1:$port/plaintext"
  "$millrace" load "$url" --cores "$load_cpu," -c 64 -d 1s > /dev/null
  "$millrace" load "$url" --cores "$load_cpu," -c 64 -d "${duration}s" --json "$work/max.json" > /dev/null
  max=$(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["requests_per_s"]))' "$work/max.json")
  echo "  maximum (closed loop, 64 connections, depth 1): $max requests/s"
  for percent in 25 50 75 90; do
    rate=$((max * percent / 100))
    steal_before=$(awk '/^cpu / {print $9}' /proc/stat)
    "$millrace" load "$url" --cores "$load_cpu," -c 64 -R "$rate" -d "${duration}s" --warmup 1s \
      --max-error-ratio 1 --json "$work/open.json" --hgrm "$base/$name-$percent.hgrm" > /dev/null || [ $? -eq 1 ]
    line=$(python3 - "$work/open.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_ms"]
errors = sum(r["errors"].values())
print("\t".join(str(x) for x in [round(r["requests_per_s"]), l["p50"], l["p99"], l["p99.9"], l["max"], errors]))
PY
)
    steal=$(( $(awk '/^cpu / {print $9}' /proc/stat) - steal_before ))
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$max" "$percent" "$rate" "$line" "$steal" >> "$results"
    IFS=$'\t' read -r achieved p50 p99 p999 worst errors <<<"$line"
    printf '  %3s%% = %8s req/s (achieved %s): p50 %s  p99 %s  p99.9 %s  max %s ms  errors %s  steal %s ticks\n' \
      "$percent" "$rate" "$achieved" "$p50" "$p99" "$p999" "$worst" "$errors" "$steal"
  done
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
done

python3 - "$results" "$base" "$duration" "$server_cpu" "$load_cpu" <<'PY'
import datetime, json, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, base, duration, server_cpu, load_cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
runs = []
for line in open(results):
    name, top, percent, rate, achieved, p50, p99, p999, worst, errors, steal = line.rstrip("\n").split("\t")
    runs.append({"server": name, "maximum_requests_per_second": int(top), "percent_of_maximum": int(percent),
                 "offered_requests_per_second": int(rate), "achieved_requests_per_second": int(achieved),
                 "p50_ms": float(p50), "p99_ms": float(p99), "p999_ms": float(p999), "max_ms": float(worst),
                 "errors": int(errors), "steal_ticks": int(steal), "hgrm": f"{base}/{name}-{percent}.hgrm"})
command = f"scripts/bench-latency.sh --duration {duration}"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(), "method": {"route": "GET /plaintext", "server_cpu": server_cpu, "load_cpu": load_cpu,
          "maximum": "closed loop, 64 connections, depth 1", "open_loop": "64 connections, corrected for coordinated omission",
          "duration_seconds": duration}, "runs": runs}
json.dump(report, open(base + ".json", "w"), indent=2)
m = report["machine"]
lines = [f"GET /plaintext, open loop at a share of each server's maximum, 64 connections, {duration} s per run; server on CPU "
         f"{server_cpu}, millrace load on CPU {load_cpu}; {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.",
         f"Command: `{command}`", "",
         "| server | maximum req/s | load | offered req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | steal ticks |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in runs:
    lines.append(f"| {r['server']} | {r['maximum_requests_per_second']:,} | {r['percent_of_maximum']}% | "
                 f"{r['offered_requests_per_second']:,} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['p999_ms']:.3f} | "
                 f"{r['max_ms']:.3f} | {r['errors']} | {r['steal_ticks']} |")
lines += ["", "Steal ticks: time the hypervisor held the VM's CPUs during the run (1 tick = 10 ms per CPU); "
          "a tail with steal beside it is the host's, not the server's."]
open(base + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "written: $base.json $base.md $base/"
