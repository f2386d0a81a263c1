#!/usr/bin/env bash
# scripts/bench-writeback.sh: rows per second through the database core
# (Redis Streams -> PostgreSQL), against the same rows written straight to
# PostgreSQL with binary COPY and with multi-row INSERT, in one run.
#
# PostgreSQL runs pinned to DB_CPU; the 3-master Redis Cluster and the
# benchmark (which runs the database core's reader and writer threads) share
# LOAD_CPU, so that PostgreSQL has a CPU to itself in every case. Each round
# (benches/writeback.rs) writes ROWS events (64-byte payloads) three ways:
#   - direct binary COPY, 5,000 rows per transaction, into a fresh table;
#   - INSERT statements of 5,000 rows, one per transaction;
#   - the database core: the rows queued in the write-back streams first
#     (not timed) as the API queues them, a post of 100 events as one
#     entry, then drained: XREADGROUP, COPY, commit, XACK, XTRIM.
# The report gives the medians of ROUNDS rounds.
#
# Results: benches/results/<date>-<host>-writeback.json and .md
#
# Usage: scripts/bench-writeback.sh [--rows N] [--rounds N] [--no-build]
# Environment: DB_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

rows=200000
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

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages redis-server redis-tools postgresql python3 pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building the write-back benchmark (release)"
  cargo build --release --quiet --bench writeback
fi
bench="$(newest_bench writeback)"

redis_dir="$root/var/bench-writeback-redis"
pg_dir="$root/var/bench-writeback-postgres"
# Bus ports are +10000: kept below the ephemeral range (32768 and up).
port=$((20700 + RANDOM % 600))
pg_port=$((port + 100))
cleanup() {
  scripts/redis-cluster.sh stop --dir "$redis_dir" > /dev/null 2>&1 || true
  scripts/postgres.sh stop --dir "$pg_dir" --port "$pg_port" > /dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
step "Redis Cluster on CPU $load_cpu, PostgreSQL on CPU $db_cpu"
seeds=$(taskset -c "$load_cpu" scripts/redis-cluster.sh start --dir "$redis_dir" --port "$port")
url=$(taskset -c "$db_cpu" scripts/postgres.sh start --dir "$pg_dir" --port "$pg_port")

results="$(mktemp)"
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  line=$(taskset -c "$load_cpu" "$bench" "$seeds" "$url" --rows "$rows")
  echo "  $line"
  echo "$line" >> "$results"
done

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="$results_dir/${stamp}-${host}-writeback"
python3 - "$results" "$base" "$rows" "$rounds" "$db_cpu" "$load_cpu" <<'PY'
import datetime, json, statistics, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, base, rows, rounds, db_cpu, load_cpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
runs = [json.loads(line) for line in open(results)]
median = {k: round(statistics.median(r[k] for r in runs)) for k in
          ("core_rows_per_second", "direct_copy_rows_per_second", "insert_rows_per_second")}
ratios = {
    "core / direct COPY": round(median["core_rows_per_second"] / median["direct_copy_rows_per_second"], 2),
    "core / multi-row INSERT": round(median["core_rows_per_second"] / median["insert_rows_per_second"], 2),
}
command = f"scripts/bench-writeback.sh --rows {rows} --rounds {rounds}"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(),
          "method": {"postgres_cpu": db_cpu, "redis_and_core_cpu": load_cpu, "rows_per_round": rows, "rounds": rounds,
                     "rows": "events, 16-byte id, ~10-byte key, 64-byte payload", "batch": "5,000 rows per transaction for all three",
                     "queue": "posts of 100 events, one stream entry each (a FlatBuffers EventBatch)"},
          "median": median, "ratios": ratios, "runs": runs}
json.dump(report, open(base + ".json", "w"), indent=2)
m = report["machine"]
lines = [f"{rows:,} events per round, medians of {rounds} rounds; PostgreSQL 15 on CPU {db_cpu}, Redis Cluster (3 masters) "
         f"and the database core on CPU {load_cpu}; {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.",
         f"Command: `{command}`", "",
         "| path | rows/s |", "|---|---:|",
         f"| database core (posts of 100 events; XREADGROUP, COPY, commit, XACK, XTRIM) | {median['core_rows_per_second']:,} |",
         f"| direct binary COPY, 5,000-row transactions | {median['direct_copy_rows_per_second']:,} |",
         f"| INSERT of 5,000 rows per statement | {median['insert_rows_per_second']:,} |", ""]
for name, ratio in ratios.items():
    lines.append(f"- {name}: **{ratio}x**")
open(base + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
rm -f "$results"
echo "written: $base.json $base.md"
