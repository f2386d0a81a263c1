#!/usr/bin/env bash
# scripts/redis-cluster.sh: a local Redis Cluster on loopback, from Debian's
# redis-server (installed when missing).
#
#   start   MASTERS masters with REPLICAS replicas each, on ports PORT and up
#           (cluster bus on port + 10000), data and logs under DIR/<port>,
#           created with redis-cli --cluster create; returns once every node
#           reports cluster_state:ok, every replica has synced and CLUSTER
#           SHARDS shows every node online, printing the seed list.
#   restart kill the node on --port (SIGKILL, as a crash) and start it again
#           from its own files (its AOF, if on); with --all, every node at
#           once. Returns once the cluster reports cluster_state:ok again.
#   stop    kill the nodes under DIR and remove DIR.
#   status  CLUSTER INFO's state and CLUSTER NODES of the first node.
#
# Usage: scripts/redis-cluster.sh start|restart|stop|status [--masters N]
#          [--replicas R] [--port BASE] [--dir DIR] [--password P]
#          [--node-timeout-ms MS] [--appendonly yes|no]
#          [--appendfsync everysec|always|no] [--maxmemory BYTES]
#          [--maxmemory-policy POLICY] [--tls CERT_DIR] [--all]
# Defaults: 3 masters, 0 replicas, port 7000, dir var/redis-cluster,
# no password, node timeout 2000 ms (how long before a failover starts).
# With --password, the default user needs it (ACL), and replicas use it too.
#
# --tls CERT_DIR (as scripts/tls-certs.sh makes it; made there if missing)
# adds a tls-port to every node, its plain port + 1000, with CERT_DIR's
# server.pem (valid for 127.0.0.1) and ca.pem; the cluster bus and
# replication go over TLS too (tls-cluster, tls-replication), and the
# cluster announces its TLS ports to TLS clients (in CLUSTER SLOTS and
# SHARDS, MOVED and ASK) and its plain ports to the others. Clients need no
# certificate of their own. start then prints the TLS seed list; the plain
# ports keep serving. The other commands find the setting under DIR.
#
# Durability and memory (docs/reliability.md says what each setting means
# for a 202): the append-only file is on and fsynced every second by
# default (--appendfsync always fsyncs before every reply; --appendonly no
# is the unsafe setting, for fault tests: a restarted node comes back
# empty). maxmemory is 512mb per node by default, with volatile-lru: only
# keys with a TTL can be evicted, which in millrace's keyspace are cache
# entries already written back and cached misses, never a write-back
# stream or an entry not yet in PostgreSQL.
set -euo pipefail

command="${1:-}"
[ -n "$command" ] && shift
masters=3
replicas=0
port=7000
dir=var/redis-cluster
password=""
node_timeout_ms=2000
appendonly=yes
appendfsync=everysec
maxmemory=512mb
maxmemory_policy=volatile-lru
tls_dir=""
all=0
while [ $# -gt 0 ]; do
  case "$1" in
    --masters) masters="$2"; shift 2 ;;
    --replicas) replicas="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --password) password="$2"; shift 2 ;;
    --node-timeout-ms) node_timeout_ms="$2"; shift 2 ;;
    --appendonly) appendonly="$2"; shift 2 ;;
    --appendfsync) appendfsync="$2"; shift 2 ;;
    --maxmemory) maxmemory="$2"; shift 2 ;;
    --maxmemory-policy) maxmemory_policy="$2"; shift 2 ;;
    --tls) tls_dir="$2"; shift 2 ;;
    --all) all=1; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$appendonly" in yes|no) ;; *) echo "--appendonly must be yes or no" >&2; exit 2 ;; esac
case "$appendfsync" in everysec|always|no) ;; *) echo "--appendfsync must be everysec, always or no" >&2; exit 2 ;; esac

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

nodes=$((masters * (replicas + 1)))
auth=()
[ -n "$password" ] && auth=(-a "$password" --no-auth-warning)
# A node's TLS port is its plain port plus this.
tls_offset=1000
# A cluster started with --tls remembers it for the other commands.
if [ -z "$tls_dir" ] && [ "$command" != start ] && [ -f "$dir/tls-dir" ]; then
  tls_dir="$(cat "$dir/tls-dir")"
fi

# cli PORT ARGS...: redis-cli to the node whose plain port is PORT (over
# TLS to its TLS port, for a TLS cluster).
cli() {
  if [ -n "$tls_dir" ]; then
    redis-cli -h 127.0.0.1 -p $(($1 + tls_offset)) --tls --cacert "$tls_dir/ca.pem" "${auth[@]}" "${@:2}"
  else
    redis-cli -h 127.0.0.1 -p "$1" "${auth[@]}" "${@:2}"
  fi
}

start() {
  if [ "$masters" -lt 3 ]; then
    echo "a Redis Cluster needs at least 3 masters" >&2
    exit 2
  fi
  if ! command -v redis-server > /dev/null || ! command -v redis-cli > /dev/null; then
    need_packages redis-server
  fi
  mkdir -p "$dir"
  if [ -n "$tls_dir" ]; then
    "$here/tls-certs.sh" "$tls_dir"
    tls_dir="$(realpath "$tls_dir")"
    echo "$tls_dir" > "$dir/tls-dir"
  fi
  local addresses=() p
  for p in $(seq "$port" $((port + nodes - 1))); do
    mkdir -p "$dir/$p"
    {
      echo "port $p"
      echo "bind 127.0.0.1"
      echo "protected-mode no"
      echo "cluster-enabled yes"
      echo "cluster-config-file $(realpath "$dir/$p")/nodes.conf"
      echo "cluster-node-timeout $node_timeout_ms"
      echo "dir $(realpath "$dir/$p")"
      echo "daemonize yes"
      echo "pidfile $(realpath "$dir/$p")/redis.pid"
      echo "logfile $(realpath "$dir/$p")/redis.log"
      # Persistence is the append-only file alone (no RDB snapshots).
      echo "save \"\""
      echo "appendonly $appendonly"
      echo "appendfsync $appendfsync"
      echo "maxmemory $maxmemory"
      echo "maxmemory-policy $maxmemory_policy"
      if [ -n "$password" ]; then
        echo "requirepass $password"
        echo "masterauth $password"
      fi
      if [ -n "$tls_dir" ]; then
        echo "tls-port $((p + tls_offset))"
        echo "tls-cert-file $tls_dir/server.pem"
        echo "tls-key-file $tls_dir/server.key"
        echo "tls-ca-cert-file $tls_dir/ca.pem"
        echo "tls-auth-clients no"
        echo "tls-cluster yes"
        echo "tls-replication yes"
        # The bus port stays the plain port's + 10000.
        echo "cluster-port $((p + 10000))"
      fi
    } > "$dir/$p/redis.conf"
    redis-server "$dir/$p/redis.conf"
    if [ -n "$tls_dir" ]; then
      addresses+=("127.0.0.1:$((p + tls_offset))")
    else
      addresses+=("127.0.0.1:$p")
    fi
  done
  for p in $(seq "$port" $((port + nodes - 1))); do
    for _ in $(seq 1 100); do
      cli "$p" ping > /dev/null 2>&1 && break
      sleep 0.05
    done
  done
  cli "$port" --cluster create "${addresses[@]}" --cluster-replicas "$replicas" --cluster-yes > "$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; exit 1; }
  # Every node agrees the cluster is ok, and every replica has synced.
  local deadline=$((SECONDS + 30)) ok synced online
  while :; do
    ok=0
    synced=0
    for p in $(seq "$port" $((port + nodes - 1))); do
      cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
      cli "$p" info replication 2>/dev/null | grep -q '^master_link_status:up' && synced=$((synced + 1))
    done
    # And the layout clients read shows every node online (replicas report
    # loading until their offset has reached the others over the bus).
    online=$(cli "$port" cluster shards 2>/dev/null | grep -cx online || true)
    [ "$ok" -eq "$nodes" ] && [ "$synced" -eq $((masters * replicas)) ] && [ "$online" -eq "$nodes" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "the cluster did not reach cluster_state:ok in 30 s" >&2
      cli "$port" cluster nodes >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  local IFS=,
  echo "${addresses[*]}"
}

# wait_ok: until every node under DIR answers and reports cluster_state:ok, at most 30 s.
wait_ok() {
  local deadline=$((SECONDS + 30)) p ok total
  while :; do
    ok=0
    total=0
    for p in "$dir"/*/redis.conf; do
      p="$(basename "$(dirname "$p")")"
      total=$((total + 1))
      cli "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
    done
    [ "$ok" -eq "$total" ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "the cluster did not return to cluster_state:ok in 30 s" >&2
      return 1
    fi
    sleep 0.1
  done
}

# crash_and_start PORT...: SIGKILL each node, then start each from its files.
crash_and_start() {
  local p pid
  for p in "$@"; do
    [ -f "$dir/$p/redis.conf" ] || { echo "no node on port $p under $dir" >&2; exit 2; }
    pid="$(cat "$dir/$p/redis.pid" 2>/dev/null || true)"
    if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  for p in "$@"; do
    pid="$(cat "$dir/$p/redis.pid" 2>/dev/null || true)"
    if [ -n "$pid" ]; then
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
      done
    fi
    rm -f "$dir/$p/redis.pid"
  done
  for p in "$@"; do
    redis-server "$dir/$p/redis.conf"
  done
  # Each answers LOADING until its AOF is read.
  for p in "$@"; do
    for _ in $(seq 1 300); do
      cli "$p" ping 2>/dev/null | grep -q PONG && break
      sleep 0.05
    done
  done
}

restart() {
  local ports=("$port") conf
  if [ "$all" = 1 ]; then
    ports=()
    for conf in "$dir"/*/redis.conf; do
      ports+=("$(basename "$(dirname "$conf")")")
    done
  fi
  crash_and_start "${ports[@]}"
  wait_ok
}

stop() {
  [ -d "$dir" ] || return 0
  local pidfile pid
  for pidfile in "$dir"/*/redis.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
  done
  for pidfile in "$dir"/*/redis.pid; do
    [ -e "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}

status() {
  cli "$port" cluster info | grep '^cluster_state'
  cli "$port" cluster nodes
}

case "$command" in
  start) start ;;
  restart) restart ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|restart|stop|status [options] (see --help)" >&2; exit 2 ;;
esac
