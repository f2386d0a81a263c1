#!/usr/bin/env bash
# scripts/postgres.sh: a private PostgreSQL from Debian's packages (installed
# when missing), its data, socket and log under DIR, on its own port.
#
#   start   initdb DIR (first time only), then pg_ctl start on 127.0.0.1:PORT
#           with its Unix socket in DIR; creates database DB owned by user
#           USER (password PASSWORD) if missing; prints the connection string.
#           With --tls, the first start also makes a private CA (DIR/ca.pem)
#           and a certificate for 127.0.0.1 signed by it, and the server
#           takes TLS (clients ask with sslmode=require and trust DIR/ca.pem).
#   stop    pg_ctl stop (--mode fast by default; immediate is a crash, with
#           recovery at the next start), then remove DIR unless --keep.
#   status  pg_ctl status.
#
# Run as root, it runs PostgreSQL as the postgres user (initdb refuses root)
# and gives DIR to that user.
#
# Usage: scripts/postgres.sh start|stop|status [--port PORT] [--dir DIR]
#          [--db DB] [--user USER] [--password PASSWORD] [--keep]
#          [--mode smart|fast|immediate] [--tls]
# Defaults: port 5440, dir var/postgres, db millrace, user millrace,
# password millrace.
set -euo pipefail

command="${1:-}"
[ -n "$command" ] && shift
port=5440
dir=var/postgres
db=millrace
user=millrace
password=millrace
keep=0
mode=fast
tls=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --db) db="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --password) password="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --tls) tls=1; shift ;;
    --mode)
      case "$2" in smart|fast|immediate) mode="$2" ;; *) echo "--mode: smart, fast or immediate" >&2; exit 2 ;; esac
      shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

bin_dir() {
  local dirs
  dirs=(/usr/lib/postgresql/*/bin)
  if [ ! -d "${dirs[0]}" ]; then
    need_packages postgresql
    dirs=(/usr/lib/postgresql/*/bin)
  fi
  printf '%s\n' "${dirs[@]}" | sort -V | tail -1
}

# as_owner CMD...: run as the postgres user when root, else as ourselves.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A private CA and a server certificate for 127.0.0.1 signed by it.
make_certificates() {
  command -v openssl > /dev/null || need_packages openssl
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=millrace test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2> /dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2> /dev/null
  printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\n' > "$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 3650 -extfile "$dir/san.ext" -out "$dir/server.crt" 2> /dev/null
  chmod 600 "$dir/server.key"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/server.key" "$dir/server.crt"
  return 0
}

start() {
  local bin
  bin="$(bin_dir)"
  mkdir -p "$dir"
  dir="$(realpath "$dir")"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 > "$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  local options="-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=100"
  if [ "$tls" = 1 ]; then
    [ -f "$dir/server.crt" ] || make_certificates
    options="$options -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
  fi
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o "$options" start > /dev/null
  local psql=(as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -v ON_ERROR_STOP=1 -qAt)
  if [ -z "$("${psql[@]}" -d postgres -c "select 1 from pg_roles where rolname = '$user'")" ]; then
    "${psql[@]}" -d postgres -c "create role \"$user\" login password '$password'"
  fi
  if [ -z "$("${psql[@]}" -d postgres -c "select 1 from pg_database where datname = '$db'")" ]; then
    "${psql[@]}" -d postgres -c "create database \"$db\" owner \"$user\""
  fi
  echo "postgres://$user:$password@127.0.0.1:$port/$db"
}

stop() {
  [ -d "$dir/data" ] || { [ "$keep" = 1 ] || rm -rf "$dir"; return 0; }
  local bin
  bin="$(bin_dir)"
  as_owner "$bin/pg_ctl" -D "$(realpath "$dir")/data" -m "$mode" -w stop > /dev/null 2>&1 || true
  [ "$keep" = 1 ] || rm -rf "$dir"
}

status() {
  as_owner "$(bin_dir)/pg_ctl" -D "$(realpath "$dir")/data" status
}

case "$command" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status [options] (see --help)" >&2; exit 2 ;;
esac
