#!/usr/bin/env bash
# scripts/bench-memory.sh: the Redis memory millrace's data takes, measured
# on a real 3-master cluster (AOF on, as the scripts run it), for
# `millrace plan`:
#   - a queued PUT: its stream entry and its pinned cache entry, before the
#     database core has written it back;
#   - a cached key: its cache entry once written back (the stream trimmed);
#   - a queued post of BATCH events: its stream entry.
# Each is `used_memory` summed over the masters, after KEYS distinct keys
# (POSTS posts) less before, divided by the count; PUTs at two value sizes,
# so that the overhead beyond the key and value bytes is known. The queue
# is filled with no database core running, then drained by one.
# Results: benches/results/<date>-<host>-memory.json and .md, with the
# figures `millrace plan --from` reads (plan_inputs).
#
# Usage: scripts/bench-memory.sh [--keys N] [--posts N] [--batch N] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

keys=50000
posts=20000
batch=10
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) keys="$2"; shift 2 ;;
    --posts) posts="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
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

need_packages redis-server redis-tools postgresql postgresql-client curl python3 pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building millrace (release)"
  cargo build --release --quiet
fi
millrace="$root/target/release/millrace"

dir="$root/var/bench-memory"
redis_port=$((21400 + RANDOM % 600))
pg_port=$(free_port)
make_work
stop_stack() {
  scripts/redis-cluster.sh stop --dir "$dir/redis" > /dev/null 2>&1 || true
  scripts/postgres.sh stop --dir "$dir/postgres" --port "$pg_port" > /dev/null 2>&1 || true
}
cleanup() {
  stop_work
  stop_stack
}
trap cleanup EXIT
stop_stack
step "a 3-master Redis Cluster and PostgreSQL on CPU $load_cpu"
seeds=$(taskset -c "$load_cpu" scripts/redis-cluster.sh start --dir "$dir/redis" --port "$redis_port")
pg_url=$(taskset -c "$load_cpu" scripts/postgres.sh start --dir "$dir/postgres" --port "$pg_port")
masters=("$redis_port" $((redis_port + 1)) $((redis_port + 2)))

used() {
  local total=0 p
  for p in "${masters[@]}"; do
    total=$((total + $(redis-cli -p "$p" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')))
  done
  echo "$total"
}

backlog() {
  curl -s "http://127.0.0.1:$port/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backlog"])'
}

port=$(free_port)
taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
  --redis-seeds "$seeds" --admin-listen "" > "$work/serve.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_for_http "http://127.0.0.1:$port/livez"

# put_keys PREFIX COUNT VALUE_BYTES: PUT COUNT distinct keys, pipelined.
put_keys() {
  taskset -c "$load_cpu" python3 - "$port" "$1" "$2" "$3" <<'PY'
import socket, sys
port, prefix, count, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
value = b"v" * size
s = socket.create_connection(("127.0.0.1", port))
buf = b""
def responses(n):
    global buf
    done = 0
    while done < n:
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
        while len(rest) < length:
            rest += s.recv(65536)
        if status != 202:
            sys.exit(f"PUT answered {status}: {rest[:length]!r}")
        buf = rest[length:]
        done += 1
for start in range(0, count, 100):
    n = min(100, count - start)
    s.sendall(b"".join(b"PUT /v1/kv/%s%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (prefix.encode(), i, size, value)
                       for i in range(start, start + n)))
    responses(n)
PY
}

# drain: a database core until the backlog is 0, then stopped.
drain() {
  MILLRACE_REDIS_SEEDS="$seeds" MILLRACE_POSTGRES_URL="$pg_url" taskset -c "$load_cpu" "$millrace" writeback \
    > "$work/writeback.log" 2>&1 &
  local core=$!
  sleep 1
  for _ in $(seq 1 600); do
    [ "$(backlog)" = 0 ] && break
    sleep 0.5
  done
  kill "$core"
  wait "$core" 2>/dev/null || true
}

results="$work/results.tsv"
: > "$results"
for value_bytes in 100 1000; do
  step "$keys PUTs of $value_bytes-byte values"
  base=$(used)
  put_keys "m$value_bytes-" "$keys" "$value_bytes"
  sleep 1
  queued=$(used)
  drain
  sleep 1
  cached=$(used)
  key_bytes=${#keys}
  key_bytes=$((key_bytes + ${#value_bytes} + 2))
  printf 'put\t%s\t%s\t%s\t%s\t%s\n' "$value_bytes" "$key_bytes" "$((queued - base))" "$((cached - base))" "$keys" >> "$results"
  echo "  queued: $(( (queued - base) / keys )) bytes per PUT; written back: $(( (cached - base) / keys )) bytes per cached key"
done

step "$posts posts of $batch events"
base=$(used)
taskset -c "$load_cpu" "$millrace" load "http://127.0.0.1:$port" --workload events --batch "$batch" \
  -c 16 -n "$posts" --max-error-ratio 0 --json "$work/events.json" > /dev/null
sleep 1
queued=$(used)
answered=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"]["answered"])' "$work/events.json")
printf 'events\t%s\t0\t%s\t0\t%s\n' "$batch" "$((queued - base))" "$answered" >> "$results"
echo "  queued: $(( (queued - base) / answered )) bytes per post of $batch events"
drain

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
out="$results_dir/${stamp}-${host}-memory"
python3 - "$results" "$out" "$keys" "$posts" "$batch" <<'PY'
import datetime, json, sys
sys.path.insert(0, "scripts")
from bench_report import machine
results, out = sys.argv[1], sys.argv[2]
keys, posts, batch = (int(x) for x in sys.argv[3:6])
rows = [line.rstrip("\n").split("\t") for line in open(results)]
puts = {}
for kind, size, key_bytes, queued, cached, count in rows:
    if kind == "put":
        size, key_bytes, count = int(size), int(key_bytes), int(count)
        puts[size] = {"value_bytes": size, "key_bytes": key_bytes, "keys": count,
                      "queued_bytes_per_put": int(queued) / count, "cached_bytes_per_key": int(cached) / count}
events = next(r for r in rows if r[0] == "events")
per_post = int(events[3]) / int(events[5])
# Overheads beyond the payload (the larger of the two sizes, to size with
# room): a cached key holds its key and value once,
# a queued PUT twice (its stream entry and its cache entry).
cached_overhead = max(p["cached_bytes_per_key"] - p["key_bytes"] - p["value_bytes"] for p in puts.values())
queued_overhead = max(p["queued_bytes_per_put"] - 2 * (p["key_bytes"] + p["value_bytes"]) for p in puts.values())
command = f"scripts/bench-memory.sh --keys {keys} --posts {posts} --batch {batch}"
source = f"{command} (benches/results/{out.rsplit('/', 1)[-1]}.md)"
report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "command": command,
          "machine": machine(), "puts": list(puts.values()),
          "events": {"batch": batch, "posts": int(events[5]), "queued_bytes_per_post": per_post},
          "plan_inputs": {"redis_cached_key_overhead_bytes": {"value": round(cached_overhead), "source": source},
                          "redis_queued_write_overhead_bytes": {"value": round(queued_overhead), "source": source}}}
json.dump(report, open(out + ".json", "w"), indent=2)
m = report["machine"]
lines = [f"Redis `used_memory` over 3 masters (AOF everysec, volatile-lru), before and after; "
         f"{m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}.", f"Command: `{command}`", "",
         "| what | value bytes | key bytes | bytes queued (per PUT, before write-back) | bytes cached (per key, after) |",
         "|---|---:|---:|---:|---:|"]
for p in puts.values():
    lines.append(f"| PUT /v1/kv/{{key}} x {p['keys']:,} | {p['value_bytes']} | {p['key_bytes']} | "
                 f"{p['queued_bytes_per_put']:,.0f} | {p['cached_bytes_per_key']:,.0f} |")
lines += ["", f"- a queued post of {batch} FlatBuffers events: {per_post:,.0f} bytes",
          f"- overhead beyond the payload: {cached_overhead:,.0f} bytes per cached key (beyond its key and value), "
          f"{queued_overhead:,.0f} per queued PUT (beyond twice its key and value: the stream entry and the cache entry)"]
open(out + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "written: $out.json $out.md"
