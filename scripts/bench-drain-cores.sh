#!/usr/bin/env bash
# scripts/bench-drain-cores.sh: rows per second drained into PostgreSQL by
# one database core against two, in alternating rounds, and what bounds it.
#
# Each measurement queues ROWS events (posts of 100, through a millrace
# server without a database core of its own, with millrace load), then
# starts N `millrace writeback` processes under their own consumer names
# and times them until the queue is empty and every row is in PostgreSQL.
# The CPU time of PostgreSQL, of the Redis Cluster and of the database
# cores during the drain is read from /proc, so the report says which one
# was the limit: PostgreSQL at a whole CPU, or every CPU of the machine
# busy, bound the drain whatever the number of cores.
#
# PostgreSQL runs on DB_CPU, Redis and the database cores on LOAD_CPU (on a
# bigger host give each its own CPUs: DB_CPU=0-3 LOAD_CPU=4-7).
#
# Results: benches/results/<date>-<host>-drain-cores.md
#
# Usage: scripts/bench-drain-cores.sh [--rows N] [--rounds N] [--no-build]
# Environment: DB_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results), PG_DIR (PostgreSQL's files; default
# var/bench-drain-postgres; a directory on tmpfs takes the disk out of the
# drain, to see what the cores alone allow)
set -euo pipefail

rows=500000
rounds=3
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
db_cpu="${DB_CPU:-0}"
load_cpu="${LOAD_CPU:-1}"
results_dir="${RESULTS_DIR:-benches/results}"
posts=$((rows / 100))

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages redis-server redis-tools postgresql postgresql-client curl python3 pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building millrace (release)"
  cargo build --release --quiet --bin millrace
fi
millrace="$root/target/release/millrace"

bench_redis bench-drain 20700 "with the database cores"
pg_dir="${PG_DIR:-$root/var/bench-drain-postgres}"
pg_port=$((redis_port + 100))
cleanup() {
  bench_redis_cleanup
  scripts/postgres.sh stop --dir "$pg_dir" --port "$pg_port" > /dev/null 2>&1 || true
}
trap cleanup EXIT
scripts/postgres.sh stop --dir "$pg_dir" --port "$pg_port" > /dev/null 2>&1 || true
step "PostgreSQL on CPU $db_cpu"
url=$(taskset -c "$db_cpu" scripts/postgres.sh start --dir "$pg_dir" --port "$pg_port")
pg_pid=$(head -1 "$pg_dir/data/postmaster.pid" 2> /dev/null || head -1 "$pg_dir"/*/postmaster.pid)

port=$(free_port)
taskset -c "$load_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$load_cpu," \
  --admin-listen "" --redis-seeds "$seeds" --max-backlog $((rows * 2)) \
  --max-backlog-bytes $((rows * 2000)) > "$work/server.log" 2>&1 &
pids+=("$!")
wait_for_http "http://127.0.0.1:$port/plaintext"

# ticks_of PIDS...: CPU ticks of the processes and their children.
ticks_of() {
  local total=0 pid
  for pid in "$@"; do total=$((total + $(cpu_ticks "$pid"))); done
  echo "$total"
}
redis_pids() { cat "$redis_dir"/*/redis.pid; }
hz=$(getconf CLK_TCK)

# disk_sectors: sectors written to every disk so far; iowait_ticks: the
# ticks every CPU spent waiting for I/O.
disk_sectors() {
  local total=0 dev
  for dev in /sys/block/*; do
    case "${dev##*/}" in loop* | ram* | zram*) continue ;; esac
    total=$((total + $(awk '{print $7}' "$dev/stat")))
  done
  echo "$total"
}
iowait_ticks() { awk '/^cpu / {print $6}' /proc/stat; }

# drain N: queue $rows events, drain them with N cores; prints
# "N seconds pg_cpu_s redis_cpu_s cores_cpu_s disk_mb iowait_s".
drain() {
  local n="$1" i start end core_pids=() written
  psql -q "$url" -c "truncate events" > /dev/null 2>&1 || true
  empty_queue
  taskset -c "$load_cpu" "$millrace" load "http://127.0.0.1:$port" --workload events --batch 100 \
    --connections 4 -n "$posts" > /dev/null
  local pg0 redis0
  pg0=$(ticks_of "$pg_pid")
  # shellcheck disable=SC2046 # one pid per word
  redis0=$(ticks_of $(redis_pids))
  local disk0 wait0
  disk0=$(disk_sectors)
  wait0=$(iowait_ticks)
  start=$(date +%s.%N)
  for i in $(seq 1 "$n"); do
    MILLRACE_REDIS_SEEDS="$seeds" MILLRACE_POSTGRES_URL="$url" taskset -c "$load_cpu" \
      "$millrace" writeback --consumer "bench-$i" > "$work/core-$n-$i.log" 2>&1 &
    core_pids+=("$!")
  done
  # The cores publish their figures every 250 ms; reading them costs
  # PostgreSQL nothing (a count(*) would).
  while :; do
    written=$(curl -sf "http://127.0.0.1:$port/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["written"])' || echo 0)
    [ "$written" -ge "$rows" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  local pg1 redis1 cores=0 pid
  pg1=$(ticks_of "$pg_pid")
  # shellcheck disable=SC2046
  redis1=$(ticks_of $(redis_pids))
  for pid in "${core_pids[@]}"; do cores=$((cores + $(cpu_ticks "$pid"))); done
  local disk1 wait1
  disk1=$(disk_sectors)
  wait1=$(iowait_ticks)
  kill "${core_pids[@]}" 2> /dev/null || true
  wait "${core_pids[@]}" 2> /dev/null || true
  python3 -c "import sys; n,s,e,p,r,c,d,w,hz=sys.argv[1:]; hz=float(hz); print(n, float(e)-float(s), int(p)/hz, int(r)/hz, int(c)/hz, int(d)*512/1e6, int(w)/hz)" \
    "$n" "$start" "$end" $((pg1 - pg0)) $((redis1 - redis0)) "$cores" $((disk1 - disk0)) $((wait1 - wait0)) "$hz"
}

results="$work/results"
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  # Alternate which goes first.
  order="1 2"
  [ $((round % 2)) -eq 0 ] && order="2 1"
  for n in $order; do
    line=$(drain "$n")
    echo "  $line" | awk '{printf "  %d core(s): %.2f s, PostgreSQL %.2f CPU-s, Redis %.2f CPU-s, cores %.2f CPU-s, %.0f MB written, %.2f s iowait\n", $1, $2, $3, $4, $5, $6, $7}'
    echo "$round $line" >> "$results"
  done
done

mkdir -p "$results_dir"
out="$results_dir/$(date -u +%Y-%m-%d)-$(hostname -s 2> /dev/null || hostname)-drain-cores.md"
python3 - "$results" "$rows" "$rounds" "$db_cpu" "$load_cpu" "$(nproc)" > "$out" <<'PY'
import statistics, sys
path, rows, rounds, db_cpu, load_cpu, cpus = sys.argv[1:]
rows = int(rows)
runs = {1: [], 2: []}
for line in open(path):
    r, n, secs, pg, redis, cores, disk, iowait = line.split()
    runs[int(n)].append((int(r), float(secs), float(pg), float(redis), float(cores), float(disk), float(iowait)))
print("# Database cores: one against two\n")
print(f"`scripts/bench-drain-cores.sh --rows {rows} --rounds {rounds}`: {rows:,} events "
      f"(posts of 100) queued, then drained by N `millrace writeback` processes; "
      f"PostgreSQL on CPU {db_cpu}, Redis and the cores on CPU {load_cpu}, {cpus} CPUs in all.\n")
print("| round | cores | seconds | rows/s | PostgreSQL CPU-s (share of the drain) | Redis CPU-s | cores CPU-s | machine busy | disk written | iowait (CPU-s) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
ratios = []
for r in sorted({x[0] for x in runs[1]}):
    per = {}
    for n in (1, 2):
        for (rr, secs, pg, redis, cores, disk, iowait) in runs[n]:
            if rr != r:
                continue
            per[n] = rows / secs
            busy = (pg + redis + cores) / (secs * int(cpus))
            print(f"| {r} | {n} | {secs:.2f} | {rows / secs:,.0f} | {pg:.2f} ({pg / secs:.0%}) | "
                  f"{redis:.2f} | {cores:.2f} | {busy:.0%} | {disk:,.0f} MB ({disk / secs:,.0f} MB/s) | {iowait:.2f} |")
    ratios.append(per[2] / per[1])
med1 = statistics.median(rows / s for (_, s, *_r) in runs[1])
med2 = statistics.median(rows / s for (_, s, *_r) in runs[2])
print(f"\nMedian rows/s: one core {med1:,.0f}, two cores {med2:,.0f}; "
      f"two over one within each round: {', '.join(f'{x:.2f}x' for x in ratios)} "
      f"(median {statistics.median(ratios):.2f}x).")
PY
cat "$out"
echo "wrote $out"
