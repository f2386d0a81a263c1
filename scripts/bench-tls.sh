#!/usr/bin/env bash
# scripts/bench-tls.sh: HTTPS millrace against nginx with TLS, side by side
# in one run, on this machine.
#
# Both terminate TLS with the same certificate (scripts/tls-certs.sh, ECDSA
# P-256), TLS 1.3, X25519 and TLS_AES_256_GCM_SHA384 (the load generator
# reports what was agreed, and the report shows it for each server):
#   - millrace: its HTTPS listener, one executor on SERVER_CPU;
#   - nginx: one worker on SERVER_CPU serving /plaintext itself, and
#     proxying /v1/ to a plain millrace on the same CPU (keep-alive
#     upstream): what a deployment does today to put TLS in front of
#     millrace. Its server CPU is nginx's and that millrace's together.
# Cases, closed loop, after a 1 s warm-up, DURATION seconds each:
#   - plaintext, kv-get (cache hits over 1,000 keys, zipf 0.99): 64
#     keep-alive connections at pipeline depth 1 and 16: requests per
#     server CPU-second;
#   - handshake-full, handshake-resumed: 16 connections, one request each
#     (Connection: close), without and with session resumption: handshakes
#     per server CPU-second (one per answered request).
# The Redis Cluster (3 masters) and millrace load share LOAD_CPU; Redis's
# CPU is the same for both and not counted. Server CPU is utime+stime from
# /proc over the measured window. Rounds alternate which server goes first;
# the report gives medians and millrace/nginx ratios within each round.
#
# With --redis-tls it also measures what TLS on the Redis links costs:
# PUT /v1/kv (100-byte values) at depth 1 and 16 with the cluster's plain
# ports against its TLS ports, requests per millrace CPU-second.
#
# Results: benches/results/<date>-<host>-tls.json and .md
#
# Usage: scripts/bench-tls.sh [--duration SECONDS] [--rounds N] [--redis-tls] [--no-build]
# Environment: SERVER_CPU (default 0), LOAD_CPU (default 1), RESULTS_DIR
# (default benches/results)
set -euo pipefail

duration=5
rounds=3
build=1
redis_tls=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --redis-tls) redis_tls=1; shift ;;
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

need_packages redis-server redis-tools nginx-light curl python3 openssl pkg-config libssl-dev
if [ "$build" = 1 ]; then
  step "building millrace (release)"
  cargo build --release --quiet --bin millrace
fi
millrace="$root/target/release/millrace"
certs="$root/var/tls"
scripts/tls-certs.sh "$certs"

if [ "$redis_tls" = 1 ]; then
  bench_redis bench-tls 21700 "plain and TLS ports" --tls "$certs"
else
  bench_redis bench-tls 21700
fi

# wait_port PORT NAME: until something listens on PORT.
wait_port() {
  local i
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start:" >&2
  cat "$work/$2.log" >&2
  return 1
}

# start_millrace PLAIN_PORT [TLS_PORT [SEEDS [EXTRA...]]]: millrace pinned to
# the server CPU; adds its pid to server_pids.
start_millrace() {
  local plain=$1 tls=${2:-} redis=${3:-$seeds}
  shift $(( $# < 3 ? $# : 3 ))
  local args=(serve --listen "127.0.0.1:$plain" --cores "$server_cpu," --redis-seeds "$redis"
    --admin-listen "")
  if [ -n "$tls" ]; then
    args+=(--tls-listen "127.0.0.1:$tls" --tls-cert-file "$certs/server.pem"
      --tls-key-file "$certs/server.key")
  fi
  taskset -c "$server_cpu" "$millrace" "${args[@]}" "$@" > "$work/millrace.log" 2>&1 &
  server_pids+=($!)
  pids+=($!)
  wait_port "$plain" millrace
}

# start_nginx TLS_PORT UPSTREAM_PORT: nginx with TLS, one worker on the
# server CPU, /v1/ proxied to UPSTREAM_PORT; adds its pid to server_pids.
start_nginx() {
  mkdir -p "$work/nginx/logs"
  cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
error_log stderr warn;
pid $work/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  upstream millrace { server 127.0.0.1:$2; keepalive 64; }
  server {
    listen 127.0.0.1:$1 ssl;
    ssl_certificate $certs/server.pem;
    ssl_certificate_key $certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384;
    ssl_session_tickets on;
    location /plaintext { default_type text/plain; return 200 "Hello, World!"; }
    location /v1/ {
      proxy_pass http://millrace;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
  taskset -c "$server_cpu" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" > "$work/nginx.log" 2>&1 &
  server_pids+=($!)
  pids+=($!)
  wait_port "$1" nginx
}

stop_servers() {
  local pid
  for pid in "${server_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  server_pids=()
}

server_ticks() {
  local pid total=0
  for pid in "${server_pids[@]}"; do
    total=$((total + $(cpu_ticks "$pid")))
  done
  echo "$total"
}

# load_args CASE URL DEPTH: millrace load's arguments for a case (into the
# array `args`).
load_args() {
  local base="$2"
  case "$1" in
    plaintext) args=("$base/plaintext" -c 64 -p "$3") ;;
    kv-get) args=("$base" --workload kv --read-ratio 1 --keys 1000 --key-dist zipf:0.99 -c 64 -p "$3") ;;
    kv-put) args=("$base" --workload kv --read-ratio 0 --keys 1000 --value-bytes 100 -c 64 -p "$3") ;;
    handshake-full) args=("$base/plaintext" -c 16 -p 1 -H "Connection: close" --no-resumption) ;;
    handshake-resumed) args=("$base/plaintext" -c 16 -p 1 -H "Connection: close") ;;
  esac
  case "$base" in https://*) args+=(--ca-file "$certs/ca.pem") ;; esac
}

# measure CASE URL DEPTH: warm up, then a measured closed-loop run; prints
# req/s, server CPU seconds, req per CPU-second, errors, what TLS agreed.
measure() {
  local args before after
  load_args "$@"
  [ "$1" = kv-put ] && empty_queue
  taskset -c "$load_cpu" "$millrace" load "${args[@]}" -d 1s --max-error-ratio 1 > /dev/null
  before=$(server_ticks)
  taskset -c "$load_cpu" "$millrace" load "${args[@]}" -d "${duration}s" --max-error-ratio 1 \
    --json "$work/run.json" > /dev/null
  after=$(server_ticks)
  python3 - "$work/run.json" "$((after - before))" "$(getconf CLK_TCK)" "$1" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
cpu = int(sys.argv[2]) / int(sys.argv[3])
misses = run["statuses"]["4xx"] if sys.argv[4] == "kv-get" else 0
errors = run["errors"]["connect"] + run["requests"]["failed"] + run["errors"]["status"] + misses
answered = run["requests"]["answered"]
negotiated = (run.get("tls") or {}).get("negotiated") or "plain"
print(round(run["requests_per_s"]), cpu, round(answered / cpu) if cpu else 0, errors,
      negotiated.replace(" ", "/"), sep="\t")
PY
}

# fill URL: every key of the kv-get workload cached.
fill() {
  local ca=()
  case "$1" in https://*) ca=(--ca-file "$certs/ca.pem") ;; esac
  empty_queue
  taskset -c "$load_cpu" "$millrace" load "$1" "${ca[@]}" --workload kv --read-ratio 0 --keys 1000 \
    --value-bytes 100 -c 16 -n 20000 --max-error-ratio 0 > /dev/null
}

results="$work/results.tsv"
: > "$results"
server_pids=()

record() { # round server case depth line
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$results"
  IFS=$'\t' read -r rps cpu per_cpu errors negotiated <<<"$5"
  printf '  %-8s %-17s depth %-2s %8s req/s  server CPU %5.2f s  %8s per CPU-s  errors %s  %s\n' \
    "$2" "$3" "$4" "$rps" "$cpu" "$per_cpu" "$errors" "$negotiated"
}

servers=(millrace nginx)
for round in $(seq 1 "$rounds"); do
  step "round $round of $rounds"
  for i in 0 1; do
    name="${servers[$(( (i + round - 1) % 2 ))]}"
    plain=$(free_port)
    tls=$(free_port)
    if [ "$name" = millrace ]; then
      start_millrace "$plain" "$tls"
    else
      start_millrace "$plain"
      start_nginx "$tls" "$plain"
    fi
    url="https://127.0.0.1:$tls"
    fill "$url"
    for case in plaintext kv-get; do
      for depth in 1 16; do
        record "$round" "$name" "$case" "$depth" "$(measure "$case" "$url" "$depth")"
      done
    done
    for case in handshake-full handshake-resumed; do
      record "$round" "$name" "$case" 1 "$(measure "$case" "$url" 1)"
    done
    stop_servers
  done
  if [ "$redis_tls" = 1 ]; then
    for links in redis-plain redis-tls; do
      plain=$(free_port)
      if [ "$links" = redis-plain ]; then
        start_millrace "$plain" "" "$seeds"
      else
        start_millrace "$plain" "" "$tls_seeds" --redis-tls true --redis-ca-file "$certs/ca.pem"
      fi
      for depth in 1 16; do
        record "$round" "$links" kv-put "$depth" "$(measure kv-put "http://127.0.0.1:$plain" "$depth")"
      done
      stop_servers
    done
  fi
done

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
base="$results_dir/${stamp}-${host}-tls"
command="scripts/bench-tls.sh --duration $duration --rounds $rounds"
[ "$redis_tls" = 1 ] && command="$command --redis-tls"
python3 - "$results" "$base" "$command" "$server_cpu" "$load_cpu" <<'PY'
import json, statistics, sys
from collections import defaultdict
results, base, command, server_cpu, load_cpu = sys.argv[1:6]
rows = [l.rstrip("\n").split("\t") for l in open(results) if l.strip()]
runs = defaultdict(list)
by_round = defaultdict(dict)
for rnd, server, case, depth, rps, cpu, per_cpu, errors, negotiated in rows:
    runs[(server, case, depth)].append(
        {"round": int(rnd), "requests_per_s": int(rps), "server_cpu_s": float(cpu),
         "per_cpu_s": int(per_cpu), "errors": int(errors), "negotiated": negotiated})
    by_round[(case, depth, rnd)][server] = int(per_cpu)
def median(values):
    return statistics.median(values) if values else 0
summary = []
for (server, case, depth), rs in sorted(runs.items()):
    summary.append({"server": server, "case": case, "depth": int(depth),
                    "requests_per_s": median([r["requests_per_s"] for r in rs]),
                    "per_cpu_s": median([r["per_cpu_s"] for r in rs]),
                    "errors": sum(r["errors"] for r in rs),
                    "negotiated": sorted({r["negotiated"] for r in rs})})
def ratios(a, b):
    out = defaultdict(list)
    for (case, depth, rnd), servers in sorted(by_round.items()):
        if a in servers and b in servers and servers[b]:
            out[(case, depth)].append(servers[a] / servers[b])
    return out
vs_nginx = ratios("millrace", "nginx")
redis = ratios("redis-tls", "redis-plain")
doc = {"command": command, "server_cpu": server_cpu, "load_cpu": load_cpu, "runs": {
    f"{s}/{c}/{d}": rs for (s, c, d), rs in runs.items()}, "summary": summary,
    "millrace_over_nginx": {f"{c}/{d}": {"per_round": [round(x, 3) for x in v], "median": round(median(v), 3)}
                            for (c, d), v in vs_nginx.items()},
    "redis_tls_over_plain": {f"{c}/{d}": {"per_round": [round(x, 3) for x in v], "median": round(median(v), 3)}
                             for (c, d), v in redis.items()}}
json.dump(doc, open(base + ".json", "w"), indent=2)
with open(base + ".md", "w") as md:
    md.write(f"HTTPS, millrace against nginx, requests (handshakes) per server CPU-second, medians of "
             f"the rounds; server on CPU {server_cpu}, load generator and Redis on CPU {load_cpu}.\n"
             f"Command: `{command}`\n\n")
    md.write("| server | case | depth | req/s | per server CPU-s | errors | agreed |\n|---|---|---|---|---|---|---|\n")
    for s in summary:
        md.write(f"| {s['server']} | {s['case']} | {s['depth']} | {s['requests_per_s']:,.0f} | "
                 f"{s['per_cpu_s']:,.0f} | {s['errors']} | {', '.join(s['negotiated'])} |\n")
    md.write("\n| case | depth | millrace / nginx, per round | median |\n|---|---|---|---|\n")
    for (c, d), v in sorted(vs_nginx.items()):
        md.write(f"| {c} | {d} | {', '.join(f'{x:.2f}' for x in v)} | {median(v):.2f} |\n")
    if redis:
        md.write("\nTLS on the Redis links, PUT requests per millrace CPU-second:\n\n"
                 "| case | depth | TLS / plain, per round | median |\n|---|---|---|---|\n")
        for (c, d), v in sorted(redis.items()):
            md.write(f"| {c} | {d} | {', '.join(f'{x:.2f}' for x in v)} | {median(v):.2f} |\n")
PY
echo
cat "$base.md"
echo "written: $base.json $base.md"
