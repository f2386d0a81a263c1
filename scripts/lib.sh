# shellcheck shell=bash
# The benchmark scripts' caller sets server_cpu, millrace, may_peer and work
# before start_server runs.
# shellcheck disable=SC2154
# Shared helpers for the scripts in scripts/. Source it; it defines functions only.

step() { printf '\n== %s\n' "$*"; }

# need_packages PKG...: install the Debian packages that are missing.
need_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  step "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
}

# hdrh_python: a Python with the `hdrhistogram` package (an HdrHistogram
# implementation other than millrace's) in var/pyvenv, made if missing;
# prints its path. Call from the repository root.
hdrh_python() {
  local venv="$PWD/var/pyvenv"
  if ! "$venv/bin/python" -c 'import hdrh' 2> /dev/null; then
    python3 -m venv "$venv" > /dev/null
    "$venv/bin/pip" install --quiet --disable-pip-version-check hdrhistogram==0.10.8 > /dev/null
  fi
  echo "$venv/bin/python"
}

# build_base REV: millrace at commit REV, built in its own worktree
# (var/bench-base, its own target directory); sets base_sha and baseline
# (the binary). Call from the repository root.
build_base() {
  base_sha=$(git rev-parse --verify "$1^{commit}")
  local dir="$PWD/var/bench-base"
  step "building $1 ($base_sha) in $dir (release)"
  if [ ! -e "$dir/.git" ]; then
    rm -rf "$dir"
    git worktree add --detach "$dir" "$base_sha" > /dev/null
  fi
  git -C "$dir" checkout --quiet --detach "$base_sha"
  (cd "$dir" && cargo build --release --quiet --bin millrace)
  # shellcheck disable=SC2034 # for the caller
  baseline="$dir/target/release/millrace"
}

# bench_redis NAME BASE [NOTE [OPTION...]]: a benchmark's 3-master Redis
# Cluster on $load_cpu, its files in var/NAME-redis (redis_dir), its first
# port BASE + RANDOM % 600 (redis_port; keep BASE + 10600 below 32768: bus
# ports are +10000 and the ephemeral range starts there), its seed list in
# seeds; OPTIONs go to scripts/redis-cluster.sh start (with --tls DIR, the
# TLS ports' seed list is in tls_seeds).
# Also makes $work and $pids (make_work), and an EXIT trap that stops them
# and the cluster. Call from the repository root.
bench_redis() {
  redis_dir="$PWD/var/$1-redis"
  redis_port=$(($2 + RANDOM % 600))
  local what="${3:-}"
  shift $(( $# < 3 ? $# : 3 ))
  make_work
  trap bench_redis_cleanup EXIT
  scripts/redis-cluster.sh stop --dir "$redis_dir" > /dev/null 2>&1 || true
  step "a 3-master Redis Cluster on CPU $load_cpu${what:+ ($what)}"
  local printed
  printed=$(taskset -c "$load_cpu" scripts/redis-cluster.sh start --dir "$redis_dir" --port "$redis_port" "$@")
  # shellcheck disable=SC2034 # for the caller
  seeds="127.0.0.1:$redis_port,127.0.0.1:$((redis_port + 1)),127.0.0.1:$((redis_port + 2))"
  # With --tls the script printed the TLS ports.
  # shellcheck disable=SC2034 # for the caller
  tls_seeds="$printed"
}

bench_redis_cleanup() {
  stop_work
  scripts/redis-cluster.sh stop --dir "$redis_dir" > /dev/null 2>&1 || true
}

# empty_queue: flush every master of bench_redis's cluster.
empty_queue() {
  local p
  for p in $(seq "$redis_port" $((redis_port + 2))); do
    redis-cli -p "$p" flushall > /dev/null
  done
}

# free_port: a TCP port on 127.0.0.1 nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# build_with_may_peer: millrace and the may_minihttp peer, release; sets
# millrace and may_peer to their binaries. Call from the repository root.
build_with_may_peer() {
  if [ "${build:-1}" = 1 ]; then
    step "building millrace and the may_minihttp peer (release)"
    cargo build --release --quiet
    cargo build --release --quiet --manifest-path benches/peers/may-minihttp/Cargo.toml
  fi
  millrace="$PWD/target/release/millrace"
  may_peer="$PWD/benches/peers/may-minihttp/target/release/peer-may-minihttp"
}

# make_work: a temporary directory in $work and an empty $pids list; the
# processes in $pids are killed and $work removed by stop_work.
make_work() {
  work="$(mktemp -d)"
  pids=()
}

# stop_work: kill what $pids lists and remove $work (for an EXIT trap).
stop_work() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}

# wait_for_http URL: until it answers, at most 10 s.
wait_for_http() {
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1 after 10 s" >&2
  return 1
}

# cpu_ticks PID: CPU ticks (utime+stime) used so far by a process and its children.
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    if [ -r "/proc/$pid/stat" ]; then
      total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  echo "$total"
}

# start_server NAME PORT: start millrace, may_minihttp or nginx with one
# worker on 127.0.0.1:PORT, pinned to $server_cpu, and wait until it answers
# /plaintext; sets server_pid and appends it to pids. Uses $work for files and
# $millrace and $may_peer for the binaries.
start_server() {
  local name="$1" port="$2"
  case "$name" in
    millrace)
      taskset -c "$server_cpu" "$millrace" serve --listen "127.0.0.1:$port" --cores "$server_cpu," \
        --admin-listen "" > "$work/$name.log" 2>&1 & ;;
    may_minihttp)
      taskset -c "$server_cpu" "$may_peer" "127.0.0.1:$port" > "$work/$name.log" 2>&1 & ;;
    nginx)
      mkdir -p "$work/nginx/logs"
      nginx_conf "$work/nginx" "$port" > "$work/nginx/nginx.conf"
      taskset -c "$server_cpu" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" > "$work/$name.log" 2>&1 & ;;
    *) echo "unknown server $name" >&2; return 1 ;;
  esac
  server_pid=$!
  pids+=("$server_pid")
  wait_for_http "http://127.0.0.1:$port/plaintext"
}

# nginx_conf DIR PORT: one worker answering /plaintext as the others do.
nginx_conf() {
  cat <<NGINX
worker_processes 1;
master_process off;
daemon off;
error_log stderr warn;
pid $1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $1;
  proxy_temp_path $1;
  fastcgi_temp_path $1;
  uwsgi_temp_path $1;
  scgi_temp_path $1;
  server {
    listen 127.0.0.1:$2;
    location /plaintext { default_type text/plain; return 200 "Hello, World!"; }
  }
}
NGINX
}

# newest_bench NAME: the most recently built bench binary named NAME.
newest_bench() {
  local file newest=""
  for file in target/release/deps/"$1"-*; do
    case "$file" in *.d) continue ;; esac
    if [ -z "$newest" ] || [ "$file" -nt "$newest" ]; then newest="$file"; fi
  done
  [ -n "$newest" ] || { echo "no built bench $1 under target/release/deps" >&2; return 1; }
  echo "$newest"
}
