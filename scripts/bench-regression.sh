#!/usr/bin/env bash
# scripts/bench-regression.sh: this tree's millrace against a build of
# another commit (BASE), side by side in one run, on the routes a change to
# the runtime must not slow down:
#   - plaintext: GET /plaintext;
#   - kv-get: GET /v1/kv/{key}, cache hits over 1,000 keys (zipf 0.99);
#   - kv-put: PUT /v1/kv/{key}, 100-byte values over 1,000 keys;
# and, for this tree only, examples/shortener's GET /{code} (a 301 from the
# cache, a click queued beside it), for its figures.
#
# BASE is built in a worktree of its own (var/bench-base, its own target
# directory). Each server runs alone, pinned to SERVER_CPU; the Redis
# Cluster (3 masters) and millrace load share LOAD_CPU. Over ROUNDS rounds
# (a fresh server process each round, the two builds in alternating order),
# for each route:
#   - closed loop, 64 connections at pipeline depth 1 and 16, DURATION
#     seconds after a 1 s warm-up: requests/s and requests per server
#     CPU-second (utime+stime from /proc over the measured window);
#   - open loop at 75% of BASE's closed-loop rate at depth 1 (measured in
#     a first pass), DURATION seconds: p50, p99 and p99.9 (corrected).
# The queue is emptied before each write run; no database core runs.
# Results: benches/results/<date>-<host>-regression.json and .md: medians,
# and the ratio of this tree to BASE within each round, with its median.
#
# --only WORKLOAD (plaintext, kv-get or kv-put) and --depth N measure that
# case alone, in as many rounds, to look again at one figure; the
# shortener is then left out.
#
# Usage: scripts/bench-regression.sh --base REV [--duration SECONDS] [--rounds N] [--only WORKLOAD] [--depth N] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

base_rev=""
only=""
only_depth=""
duration=5
rounds=5
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base_rev="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --depth) only_depth="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$base_rev" ] || { echo "--base REV is required (see --help)" >&2; exit 2; }
server_cpu="${SERVER_CPU:-0}"
load_cpu="${LOAD_CPU:-1}"
results_dir="${RESULTS_DIR:-benches/results}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages redis-server redis-tools postgresql postgresql-client curl python3 pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building this tree (release): millrace and examples/shortener"
  cargo build --release --quiet --bin millrace --example shortener
  build_base "$base_rev"
else
  base_sha=$(git rev-parse --verify "$base_rev^{commit}")
  baseline="$root/var/bench-base/target/release/millrace"
fi
current="$root/target/release/millrace"
shortener="$root/target/release/examples/shortener"

bench_redis bench-regression 21400


# start NAME PORT: the server pinned to the server CPU; sets server_pid.
start() {
  local binary
  case "$1" in
    current) binary="$current" ;;
    base) binary="$baseline" ;;
    shortener) binary="$shortener" ;;
  esac
  # The server accepts the AOF-less risk: the bench's Redis has AOF on,
  # but a base from before the durability checks would not know the flag.
  taskset -c "$server_cpu" "$binary" serve --listen "127.0.0.1:$2" --cores "$server_cpu," \
    --redis-seeds "$seeds" --admin-listen "" > "$work/$1.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$1 did not start:" >&2
  cat "$work/$1.log" >&2
  return 1
}

# target WORKLOAD URL: millrace load's target and flags for it.
target() {
  case "$1" in
    plaintext) echo "$2/plaintext" ;;
    kv-get) echo "$2 --workload kv --read-ratio 1 --keys 1000 --key-dist zipf:0.99" ;;
    kv-put) echo "$2 --workload kv --read-ratio 0 --keys 1000 --value-bytes 100" ;;
    follow) echo "$2/$code" ;;
  esac
}

# measure NAME WORKLOAD DEPTH: a closed-loop run; prints req/s, server CPU
# seconds and errors.
measure() {
  # shellcheck disable=SC2046
  set -- "$1" "$2" "$3" $(target "$2" "$url")
  local name=$1 workload=$2 depth=$3
  shift 3
  [ "$workload" = kv-put ] && empty_queue
  taskset -c "$load_cpu" "$current" load "$@" -c 64 -p "$depth" -d 1s --max-error-ratio 1 > /dev/null
  local before after
  before=$(cpu_ticks "$server_pid")
  taskset -c "$load_cpu" "$current" load "$@" -c 64 -p "$depth" \
    -d "${duration}s" --max-error-ratio 1 --json "$work/closed.json" > /dev/null
  after=$(cpu_ticks "$server_pid")
  python3 - "$work/closed.json" "$((after - before))" "$(getconf CLK_TCK)" "$workload" <<'PY'
import json, sys
closed = json.load(open(sys.argv[1]))
cpu = int(sys.argv[2]) / int(sys.argv[3])
misses = closed["statuses"]["4xx"] if sys.argv[4] == "kv-get" else 0
errors = closed["errors"]["connect"] + closed["requests"]["failed"] + closed["errors"]["status"] + misses
print(round(closed["requests_per_s"]), cpu, round(closed["requests"]["answered"] / cpu) if cpu else 0, errors, sep="\t")
PY
}

# latency WORKLOAD RATE: an open-loop run at RATE; prints p50, p99, p99.9.
latency() {
  # shellcheck disable=SC2046
  set -- "$1" "$2" $(target "$1" "$url")
  local rate=$2
  shift 2
  taskset -c "$load_cpu" "$current" load "$@" -c 64 -R "$rate" -d "${duration}s" --warmup 1s \
    --max-error-ratio 1 --json "$work/open.json" > /dev/null || [ $? -eq 1 ]
  python3 - "$work/open.json" <<'PY'
import json, sys
l = json.load(open(sys.argv[1]))["latency_ms"]
print(l["p50"], l["p99"], l["p99.9"], sep="\t")
PY
}

# fill: every key of the kv-get workload cached.
fill() {
  empty_queue
  taskset -c "$load_cpu" "$current" load "$url" --workload kv --read-ratio 0 --keys 1000 \
    --value-bytes 100 -c 16 -n 20000 --max-error-ratio 0 > /dev/null
}

case "${only:-all}" in
  all) workloads=(plaintext kv-get kv-put) ;;
  plaintext | kv-get | kv-put) workloads=("$only") ;;
  *) echo "--only: plaintext, kv-get or kv-put, not $only" >&2; exit 2 ;;
esac
case "${only_depth:-all}" in
  all) depths=(1 16) ;;
  1 | 16) depths=("$only_depth") ;;
  *) echo "--depth: 1 or 16, not $only_depth" >&2; exit 2 ;;
esac
results="$work/results.tsv"
: > "$results"

step "calibration: $base_rev's closed-loop rate at depth 1, for the open-loop runs at 75%"
declare -A rate
port=$(free_port)
start base "$port"
url="http://127.0.0.1:$port"
fill
for workload in "${workloads[@]}"; do
  IFS=$'\t' read -r rps _ <<<"$(measure base "$workload" 1)"
  rate[$workload]=$((rps * 3 / 4))
  printf '  %-9s %8s req/s -> open loop at %s/s\n' "$workload" "$rps" "${rate[$workload]}"
done
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true

names=(current base)
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  for i in 0 1; do
    name="${names[$(( (i + round - 1) % 2 ))]}"
    port=$(free_port)
    start "$name" "$port"
    url="http://127.0.0.1:$port"
    fill
    for workload in "${workloads[@]}"; do
      for depth in "${depths[@]}"; do
        line=$(measure "$name" "$workload" "$depth")
        printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$workload" "$depth" "$line" >> "$results"
        IFS=$'\t' read -r rps cpu per_cpu errors <<<"$line"
        printf '  %-7s %-9s depth %-2s %8s req/s  server CPU %5.2f s  %9s req per CPU-s  errors %s\n' \
          "$name" "$workload" "$depth" "$rps" "$cpu" "$per_cpu" "$errors"
      done
      [ "$workload" = kv-put ] && fill
      line=$(latency "$workload" "${rate[$workload]}")
      printf '%s\t%s\t%s\topen\t%s\n' "$round" "$name" "$workload" "$line" >> "$results"
      IFS=$'\t' read -r p50 p99 p999 <<<"$line"
      printf '  %-7s %-9s at %s/s: p50 %s p99 %s p99.9 %s ms\n' "$name" "$workload" "${rate[$workload]}" "$p50" "$p99" "$p999"
    done
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  done
done

if [ -z "$only$only_depth" ]; then
step "examples/shortener: GET /{code} (a 301 from the cache, a click queued)"
# A link is created by a shortener with its database core (creating one
# reads through: the code must be free); the measured one runs without it,
# as the servers above do, and answers from the cache.
pg_port=$(free_port)
pg_dir="$root/var/bench-regression-postgres"
pg_url=$(taskset -c "$load_cpu" scripts/postgres.sh start --dir "$pg_dir" --port "$pg_port")
port=$(free_port)
taskset -c "$server_cpu" "$shortener" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
  --redis-seeds "$seeds" --postgres-url "$pg_url" --admin-listen "" > "$work/shortener-setup.log" 2>&1 &
setup_pid=$!
pids+=("$setup_pid")
wait_for_http "http://127.0.0.1:$port/livez"
code=bench
curl -sf -o /dev/null -H 'Content-Type: application/json' \
  --data "{\"url\": \"https://example.com/landing\", \"code\": \"$code\"}" "http://127.0.0.1:$port/links"
kill "$setup_pid"; wait "$setup_pid" 2>/dev/null || true
scripts/postgres.sh stop --dir "$pg_dir" --port "$pg_port" > /dev/null 2>&1 || true
port=$(free_port)
start shortener "$port"
url="http://127.0.0.1:$port"
for depth in "${depths[@]}"; do
  line=$(measure shortener follow "$depth")
  printf '0\tshortener\tfollow\t%s\t%s\n' "$depth" "$line" >> "$results"
  IFS=$'\t' read -r rps cpu per_cpu errors <<<"$line"
  printf '  shortener follow depth %-2s %8s req/s  server CPU %5.2f s  %9s req per CPU-s  errors %s\n' \
    "$depth" "$rps" "$cpu" "$per_cpu" "$errors"
done
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
fi

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
out="$results_dir/${stamp}-${host}-regression${only:+-$only}${only_depth:+-d$only_depth}"
python3 - "$results" "$out" "$duration" "$rounds" "$server_cpu" "$load_cpu" "$base_rev" "$base_sha" \
  "$(git rev-parse HEAD)" "$(git status --porcelain | grep -qv '^??' && echo dirty || echo clean)" \
  "${only:+ --only $only}${only_depth:+ --depth $only_depth}" <<'PY'
import datetime, json, statistics, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, out = sys.argv[1], sys.argv[2]
duration, rounds = int(sys.argv[3]), int(sys.argv[4])
server_cpu, load_cpu, base_rev, base_sha, head, tree, selection = sys.argv[5:12]
closed, opened, shortener = [], [], []
for line in open(results):
    f = line.rstrip("\n").split("\t")
    if f[1] == "shortener":
        shortener.append({"depth": int(f[3]), "requests_per_second": int(f[4]), "requests_per_server_cpu_second": int(f[6]),
                          "errors": int(f[7])})
    elif f[3] == "open":
        opened.append({"round": int(f[0]), "build": f[1], "workload": f[2], "p50_ms": float(f[4]), "p99_ms": float(f[5]),
                       "p999_ms": float(f[6])})
    else:
        closed.append({"round": int(f[0]), "build": f[1], "workload": f[2], "depth": int(f[3]),
                       "requests_per_second": int(f[4]), "server_cpu_seconds": float(f[5]),
                       "requests_per_server_cpu_second": int(f[6]), "errors": int(f[7])})
routes = {"plaintext": "GET /plaintext", "kv-get": "GET /v1/kv/{key} (cache hits)", "kv-put": "PUT /v1/kv/{key} (100 bytes)"}
summary = []
for workload in routes:
    for depth in (1, 16):
        row = {"workload": workload, "depth": depth}
        if not any(r["workload"] == workload and r["depth"] == depth for r in closed):
            continue  # not measured (--only, --depth)
        for build in ("current", "base"):
            mine = [r for r in closed if r["build"] == build and r["workload"] == workload and r["depth"] == depth]
            row[build] = {k: statistics.median(r[k] for r in mine) for k in ("requests_per_second", "requests_per_server_cpu_second")}
            row[build]["errors"] = sum(r["errors"] for r in mine)
        within = []
        for rnd in range(1, rounds + 1):
            a = [r for r in closed if r["round"] == rnd and r["build"] == "current" and r["workload"] == workload and r["depth"] == depth]
            b = [r for r in closed if r["round"] == rnd and r["build"] == "base" and r["workload"] == workload and r["depth"] == depth]
            if a and b and b[0]["requests_per_server_cpu_second"]:
                within.append(a[0]["requests_per_server_cpu_second"] / b[0]["requests_per_server_cpu_second"])
        row["ratio_within_rounds"] = [round(x, 3) for x in within]
        row["ratio_median"] = round(statistics.median(within), 3) if within else None
        summary.append(row)
latency = []
for workload in routes:
    if not any(r["workload"] == workload for r in opened):
        continue
    row = {"workload": workload}
    for build in ("current", "base"):
        mine = [r for r in opened if r["build"] == build and r["workload"] == workload]
        row[build] = {k: statistics.median(r[k] for r in mine) for k in ("p50_ms", "p99_ms", "p999_ms")}
    latency.append(row)
command = f"scripts/bench-regression.sh --base {base_rev} --duration {duration} --rounds {rounds}{selection}"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(), "current": f"{head} ({tree} tree)", "base": f"{base_rev} ({base_sha})",
          "method": {"server_cpu": server_cpu, "redis_and_load_cpu": load_cpu, "closed_loop": "64 connections",
                     "rounds": rounds, "duration_seconds": duration, "open_loop": "75% of the base's closed-loop rate at depth 1"},
          "summary": summary, "latency": latency, "shortener_follow": shortener, "closed": closed, "open": opened}
json.dump(report, open(out + ".json", "w"), indent=2)
m = report["machine"]
lines = [f"This tree ({head[:12]}, {tree}) against {base_rev} ({base_sha[:12]}): server on CPU {server_cpu}, Redis Cluster (3 masters) "
         f"and millrace load on CPU {load_cpu}, {rounds} rounds in alternating order, medians; {m['cpu_model']}, {m['cpus']} CPUs, "
         f"Linux {m['kernel']}.", f"Command: `{command}`", "",
         "| route | depth | req/s, this tree | base | req per server CPU-s, this tree | base | ratio within rounds (median) |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for row in summary:
    c, b = row["current"], row["base"]
    lines.append(f"| {routes[row['workload']]} | {row['depth']} | {c['requests_per_second']:,.0f} | {b['requests_per_second']:,.0f} | "
                 f"{c['requests_per_server_cpu_second']:,.0f} | {b['requests_per_server_cpu_second']:,.0f} | "
                 f"**{row['ratio_median']}x** ({', '.join(str(x) for x in row['ratio_within_rounds'])}) |")
lines += ["", "| route | open loop at 75% of the base's rate | p50 ms, this tree | base | p99 ms, this tree | base | p99.9 ms, this tree | base |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
for row in latency:
    c, b = row["current"], row["base"]
    lines.append(f"| {routes[row['workload']]} | depth 1 | {c['p50_ms']:.3f} | {b['p50_ms']:.3f} | {c['p99_ms']:.3f} | {b['p99_ms']:.3f} | "
                 f"{c['p999_ms']:.3f} | {b['p999_ms']:.3f} |")
if shortener:
    lines += ["", "| examples/shortener `GET /{code}` (301 from the cache, a click queued) | req/s | req per server CPU-s | errors |",
              "|---|---:|---:|---:|"]
    for row in shortener:
        lines.append(f"| depth {row['depth']} | {row['requests_per_second']:,} | {row['requests_per_server_cpu_second']:,} | {row['errors']} |")
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "written: $out.json $out.md"
