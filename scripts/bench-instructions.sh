#!/usr/bin/env bash
# scripts/bench-instructions.sh: user-space instructions per request of this
# tree's millrace against a build of another commit (BASE), counted by
# callgrind: a figure this shared, noisy machine cannot blur, beside the
# CPU-time ratios of scripts/bench-regression.sh (which also count the
# kernel's share, where most of a request's time goes).
#
# Each server runs under valgrind --tool=callgrind, one executor, with the
# counters zeroed after a warm-up of each workload and dumped after exactly
# REQUESTS more answered requests (64 connections): GET /plaintext at depth
# 16; GET /v1/kv cache hits over 1,000 keys at depth 1 and 16; PUT /v1/kv
# (100-byte values) at depth 1 and 16. A 3-master Redis Cluster serves
# both; no database core runs. Instructions in the kernel (system calls,
# the network stack) are not counted.
#
# BASE is built as scripts/bench-regression.sh builds it (var/bench-base).
# Results: benches/results/<date>-<host>-instructions.json and .md; the
# callgrind profiles stay in var/bench-instructions/ for callgrind_annotate.
#
# With --side generator, the other end: millrace load's own instructions per
# request, base against this tree, against this tree's server (no Redis:
# the kv mix is answered 503 at once, through the same recording path).
# Each case runs under callgrind with REQUESTS and with 6 x REQUESTS
# requests; the difference over the difference in requests leaves set-up
# out. This tree's runs also write an interval log (--hlog). Under
# valgrind a second holds about 50 times fewer requests than on hardware,
# so the once-a-second interval work weighs about 50 times more per
# request here than it does at full speed.
#
# Usage: scripts/bench-instructions.sh --base REV [--requests N] [--side server|generator] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

base_rev=""
requests=20000
side=server
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base_rev="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --side) side="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$base_rev" ] || { echo "--base REV is required (see --help)" >&2; exit 2; }
case "$side" in server|generator) ;; *) echo "--side is server or generator" >&2; exit 2 ;; esac
server_cpu="${SERVER_CPU:-0}"
load_cpu="${LOAD_CPU:-1}"
results_dir="${RESULTS_DIR:-benches/results}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages redis-server redis-tools valgrind python3 pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building this tree (release)"
  cargo build --release --quiet --bin millrace
  build_base "$base_rev"
else
  base_sha=$(git rev-parse --verify "$base_rev^{commit}")
  baseline="$root/var/bench-base/target/release/millrace"
fi
current="$root/target/release/millrace"

if [ "$side" = generator ]; then
  profiles="$root/var/bench-instructions-generator"
  rm -rf "$profiles"
  mkdir -p "$profiles"
  make_work
  trap stop_work EXIT
  port=$(free_port)
  taskset -c "$server_cpu" "$current" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
    --admin-listen "" > "$work/server.log" 2>&1 &
  pids+=("$!")
  wait_for_http "http://127.0.0.1:$port/plaintext"
  url="http://127.0.0.1:$port"
  results="$work/results.tsv"
  : > "$results"
  # instructions BINARY NAME N ARGS...: the generator's whole run, counted.
  instructions() {
    local binary=$1 name=$2 n=$3
    shift 3
    taskset -c "$load_cpu" valgrind --tool=callgrind --callgrind-out-file="$profiles/$name-$n.out" \
      "$binary" load "$@" -c 64 -n "$n" --max-error-ratio 1 > /dev/null 2> "$work/valgrind.log"
    awk '/^summary:/ {print $2}' "$profiles/$name-$n.out"
  }
  for case in plaintext:1 plaintext:16 kv:16; do
    workload=${case%%:*}
    depth=${case##*:}
    case "$workload" in
      plaintext) set -- "$url/plaintext" -p "$depth" ;;
      kv) set -- "$url" --workload kv --read-ratio 0.5 --keys 1000 -p "$depth" ;;
    esac
    for name in base current; do
      binary=$baseline
      extra=()
      if [ "$name" = current ]; then
        binary=$current
        extra=(--hlog "$work/run.hlog")
      fi
      small=$(instructions "$binary" "$name-$workload-$depth" "$requests" "$@" "${extra[@]}")
      large=$(instructions "$binary" "$name-$workload-$depth" $((requests * 6)) "$@" "${extra[@]}")
      per=$(( (large - small) / (requests * 5) ))
      printf '%s\t%s\t%s\t%s\n' "$name" "$workload" "$depth" "$per" >> "$results"
      printf '  %-7s %-9s depth %-2s %8s instructions per request\n' "$name" "$workload" "$depth" "$per"
    done
  done
  mkdir -p "$results_dir"
  out="$results_dir/$(date -u +%Y-%m-%d)-$(hostname -s 2>/dev/null || hostname)-generator-instructions"
  python3 - "$results" "$out" "$requests" "$base_rev" "$base_sha" "$(git rev-parse HEAD)" \
    "$(git status --porcelain | grep -qv '^??' && echo dirty || echo clean)" <<'PY'
import datetime, json, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, out, requests, base_rev, base_sha, head, tree = sys.argv[1:8]
rows = {}
for line in open(results):
    name, workload, depth, per = line.split()
    rows.setdefault((workload, int(depth)), {})[name] = int(per)
command = f"scripts/bench-instructions.sh --base {base_rev} --requests {requests} --side generator"
summary = [{"workload": w, "depth": d, **by, "ratio": round(by["current"] / by["base"], 3)} for (w, d), by in rows.items()]
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
           "machine": machine(), "current": f"{head} ({tree} tree), with --hlog", "base": f"{base_rev} ({base_sha})",
           "counted": "user-space instructions of millrace load per request (callgrind Ir), set-up left out",
           "summary": summary}, open(out + ".json", "w"), indent=2)
names = {"plaintext": "GET /plaintext", "kv": "kv mix, 50% GET (503s: no Redis)"}
lines = [f"millrace load's instructions per request: this tree ({head[:12]}, {tree}, writing --hlog) against {base_rev} "
         f"({base_sha[:12]}), counted by callgrind as the difference between runs of {int(requests):,} and "
         f"{int(requests) * 6:,} requests, 64 connections.", f"Command: `{command}`", "",
         "| workload | depth | this tree | base | this tree / base |", "|---|---:|---:|---:|---:|"]
for row in summary:
    lines.append(f"| {names[row['workload']]} | {row['depth']} | {row['current']:,} | {row['base']:,} | **{row['ratio']}x** |")
lines += ["", "Under valgrind a second holds about 50 times fewer requests than at full speed, so the work done once a "
          "second (closing intervals, writing the interval log) weighs about 50 times more per request here; "
          "callgrind_annotate on the profiles in var/bench-instructions-generator/ shows its share."]
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
  echo "written: $out.json $out.md"
  exit 0
fi

profiles="$root/var/bench-instructions"
rm -rf "$profiles"
mkdir -p "$profiles"
bench_redis bench-instructions 22000


# load ARGS...: millrace load on the load CPU, every request answered.
load() {
  taskset -c "$load_cpu" "$current" load "$@" -c 64 --max-error-ratio 0 > /dev/null
}

results="$work/results.tsv"
: > "$results"
for name in base current; do
  case "$name" in
    base) binary="$baseline" ;;
    current) binary="$current" ;;
  esac
  step "$name under callgrind"
  port=$(free_port)
  taskset -c "$server_cpu" valgrind --tool=callgrind --callgrind-out-file="$profiles/$name.%p" \
    "$binary" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
    --redis-seeds "$seeds" --admin-listen "" > "$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  # valgrind starts slowly: up to a minute.
  for _ in $(seq 1 6); do
    wait_for_http "http://127.0.0.1:$port/plaintext" 2> /dev/null && break
  done
  wait_for_http "http://127.0.0.1:$port/plaintext"
  url="http://127.0.0.1:$port"
  empty_queue
  load "$url" --workload kv --read-ratio 0 --keys 1000 --value-bytes 100 -n 5000
  for case in plaintext:16 kv-get:1 kv-get:16 kv-put:1 kv-put:16; do
    workload=${case%%:*}
    depth=${case##*:}
    case "$workload" in
      plaintext) set -- "$url/plaintext" ;;
      kv-get) set -- "$url" --workload kv --read-ratio 1 --keys 1000 --key-dist zipf:0.99 ;;
      kv-put) set -- "$url" --workload kv --read-ratio 0 --keys 1000 --value-bytes 100 ;;
    esac
    [ "$workload" = kv-put ] && empty_queue
    load "$@" -p "$depth" -n 2000
    [ "$workload" = kv-put ] && empty_queue
    callgrind_control --zero "$pid" > /dev/null 2>&1
    load "$@" -p "$depth" -n "$requests" --json "$work/load.json"
    callgrind_control --dump="$workload-$depth" "$pid" > /dev/null 2>&1
    # The dump is written by the server's next turn.
    profile=""
    for _ in $(seq 1 100); do
      profile=$(grep -l "^desc: Trigger: dump $workload-$depth\$" "$profiles/$name.$pid".* 2> /dev/null | head -1 || true)
      [ -n "$profile" ] && break
      sleep 0.1
    done
    [ -n "$profile" ] || { echo "callgrind wrote no profile for $name $workload-$depth" >&2; exit 1; }
    instructions=$(awk '/^summary:/ {print $2}' "$profile")
    answered=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"]["answered"])' "$work/load.json")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$workload" "$depth" "$instructions" "$answered" "$(basename "$profile")" >> "$results"
    printf '  %-7s %-9s depth %-2s %12s instructions / %s requests\n' "$name" "$workload" "$depth" "$instructions" "$answered"
  done
  kill "$pid"
  wait "$pid" 2> /dev/null || true
done

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
out="$results_dir/${stamp}-${host}-instructions"
python3 - "$results" "$out" "$requests" "$base_rev" "$base_sha" "$(git rev-parse HEAD)" \
  "$(git status --porcelain | grep -qv '^??' && echo dirty || echo clean)" <<'PY'
import datetime, json, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, out, requests, base_rev, base_sha, head, tree = sys.argv[1:8]
rows = {}
for line in open(results):
    name, workload, depth, instructions, answered, profile = line.rstrip("\n").split("\t")
    rows.setdefault((workload, int(depth)), {})[name] = {
        "instructions": int(instructions), "requests": int(answered),
        "per_request": round(int(instructions) / int(answered)), "profile": f"var/bench-instructions/{profile}"}
routes = {"plaintext": "GET /plaintext", "kv-get": "GET /v1/kv/{key} (cache hits)", "kv-put": "PUT /v1/kv/{key} (100 bytes)"}
summary = []
for (workload, depth), by in rows.items():
    summary.append({"workload": workload, "depth": depth, **by,
                    "ratio": round(by["current"]["per_request"] / by["base"]["per_request"], 3)})
command = f"scripts/bench-instructions.sh --base {base_rev} --requests {requests}"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(), "current": f"{head} ({tree} tree)", "base": f"{base_rev} ({base_sha})",
          "counted": "user-space instructions of the server process (callgrind Ir), one executor", "summary": summary}
json.dump(report, open(out + ".json", "w"), indent=2)
lines = [f"This tree ({head[:12]}, {tree}) against {base_rev} ({base_sha[:12]}): user-space instructions per answered "
         f"request, counted by callgrind over {int(requests):,} requests after a warm-up, one executor, 64 connections.",
         f"Command: `{command}`", "",
         "| route | depth | instructions per request, this tree | base | this tree / base |", "|---|---:|---:|---:|---:|"]
for row in summary:
    lines.append(f"| {routes[row['workload']]} | {row['depth']} | {row['current']['per_request']:,} | "
                 f"{row['base']['per_request']:,} | **{row['ratio']}x** |")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "written: $out.json $out.md"
