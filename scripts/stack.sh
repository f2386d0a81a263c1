#!/usr/bin/env bash
# scripts/stack.sh: the whole local stack in one command: a Redis Cluster
# (scripts/redis-cluster.sh), a PostgreSQL (scripts/postgres.sh), and
# millrace serve with its database core (write-back and read-through), all
# under var/stack.
#
#   up      build millrace (release), start everything, print where each
#           part listens and how to stop it. Returns once the server is ready.
#   down    stop millrace, the database core, PostgreSQL and the cluster.
#   status  what is running.
#
# Usage: scripts/stack.sh up|down|status [--port PORT]
# Defaults: millrace on 127.0.0.1:8080, Redis on 7000-7002, PostgreSQL on 5440.
# Environment: SERVER_CPU (default 0) for millrace, DB_CPU (default 1) for
# the database core.
set -euo pipefail

command="${1:-}"
[ -n "$command" ] && shift
port=8080
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
server_cpu="${SERVER_CPU:-0}"
db_cpu="${DB_CPU:-1}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
dir="$root/var/stack"
millrace="$root/target/release/millrace"

up() {
  need_packages curl pkg-config libssl-dev
  mkdir -p "$dir"
  step "building millrace (release)"
  cargo build --release --locked --quiet
  step "Redis Cluster"
  seeds=$(scripts/redis-cluster.sh start --dir "$dir/redis" --port 7000)
  echo "$seeds" > "$dir/seeds"
  step "PostgreSQL"
  url=$(scripts/postgres.sh start --dir "$dir/postgres" --port 5440)
  echo "$url" > "$dir/postgres-url"
  step "millrace serve on CPU $server_cpu, port $port, its database core on CPU $db_cpu"
  MILLRACE_POSTGRES_URL="$url" nohup "$millrace" serve --listen "127.0.0.1:$port" \
    --cores "$server_cpu," --db-core "$db_cpu" --redis-seeds "$seeds" \
    > "$dir/serve.log" 2>&1 &
  echo $! > "$dir/serve.pid"
  wait_for_http "http://127.0.0.1:$port/readyz"
  cat <<EOF

millrace     http://127.0.0.1:$port  (log: $dir/serve.log)
admin        http://127.0.0.1:9180/metrics, /livez, /readyz
Redis        $seeds
PostgreSQL   $url
stop with    scripts/stack.sh down
EOF
}

stop_pid() {
  local file="$1" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

down() {
  stop_pid "$dir/serve.pid"
  scripts/postgres.sh stop --dir "$dir/postgres" --port 5440 || true
  scripts/redis-cluster.sh stop --dir "$dir/redis" || true
  rm -rf "$dir"
}

status() {
  if [ -f "$dir/serve.pid" ] && kill -0 "$(cat "$dir/serve.pid")" 2>/dev/null; then
    echo "serve: running (pid $(cat "$dir/serve.pid"))"
  else
    echo "serve: not running"
  fi
  local state
  state=$(scripts/redis-cluster.sh status --dir "$dir/redis" --port 7000 2>/dev/null | grep '^cluster_state' || true)
  echo "redis: ${state:-not running}"
  if scripts/postgres.sh status --dir "$dir/postgres" > /dev/null 2>&1; then
    echo "postgres: running"
  else
    echo "postgres: not running"
  fi
}

case "$command" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status (see --help)" >&2; exit 2 ;;
esac
