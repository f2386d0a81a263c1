#!/usr/bin/env bash
# scripts/chaos.sh: the fault suite (tests/chaos.rs), seeded and repeatable.
#
# Each scenario starts its own Redis Cluster, PostgreSQL and millrace, drives
# open-loop event load with `millrace load --ledger` and a kv history
# (PUT, DELETE, GET, compare-and-set over a small key set) beside it,
# injects one fault (SIGKILL and SIGTERM of the server; a Redis master
# killed with and without ack_replicas, restarted from its AOF, restarted
# empty without one; every node restarted at once; Redis at maxmemory;
# 2,000 slots resharded; PostgreSQL stopped for OUTAGE seconds and crashed
# with -m immediate; the database core killed before its insert and between
# commit and XACK; latency, a stall and cuts on the PostgreSQL link and on
# the Redis links; load at 50 to 120% of capacity; slowloris with the
# connection cap reached and a 300,000-request pipeline flood), lets the
# queue drain, and checks the ledger against the events table (events
# answered 202 missing, redelivered, or stored though refused) and the kv
# history against itself and the kv table (lost writes, refused values
# stored, stale reads, keys come back, double compare-and-set wins). Both
# tables are printed and written to benches/results/<date>-<host>-chaos.md.
#
# Usage: scripts/chaos.sh [--seed N] [--outage-seconds N] [--only NAME]
# Defaults: seed 1, outage 60 s (the test suite's own pass uses 10 s), every
# scenario (--only takes a part of a test name, such as failover).
# Environment: RESULTS_DIR (default benches/results)
set -euo pipefail

seed=1
outage=60
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --outage-seconds) outage="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$seed$outage" in *[!0-9]*) echo "--seed and --outage-seconds take whole numbers" >&2; exit 2 ;; esac
results_dir="${RESULTS_DIR:-benches/results}"

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages curl redis-server redis-tools postgresql postgresql-client pkg-config libssl-dev

rows="$(mktemp)"
log="$(mktemp)"
trap 'rm -f "$rows" "$rows.kv" "$log"' EXIT

step "fault suite: seed $seed, PostgreSQL down $outage s"
status=0
MILLRACE_CHAOS_SEED="$seed" MILLRACE_CHAOS_OUTAGE_S="$outage" MILLRACE_CHAOS_REPORT="$rows" \
  cargo test --locked --test chaos -- --test-threads 1 --nocapture ${only:+"$only"} 2>&1 | tee "$log" || status=$?

mkdir -p "$results_dir"
stamp="$(date -u +%Y-%m-%d)"
host="$(hostname -s 2>/dev/null || hostname)"
out="$results_dir/${stamp}-${host}-chaos.md"
{
  echo "Fault suite ledgers: events (10 per request) answered 202 vs rows in PostgreSQL. Seed $seed, PostgreSQL outage $outage s; $(nproc) CPUs, Linux $(uname -r)."
  echo "Command: \`scripts/chaos.sh --seed $seed --outage-seconds $outage${only:+ --only $only}\`"
  echo
  echo "| scenario | requests | answers | no answer | events accepted | rows | missing | redelivered | unexpected |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
  cat "$rows"
  echo
  echo "The kv history beside each load: requests (4 clients), writes acknowledged, answers lost, refused (412 mostly), reads, and each kind of violation."
  echo
  echo "| scenario | kv requests | written | unknown | refused | reads | lost | refused stored | stale reads | came back | double wins |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  cat "$rows.kv" 2>/dev/null || true
  echo
  grep -h '^kv: ' "$log" | sed 's/^/- /' || true
  grep -h '^peak RSS' "$log" | sed 's/^/- abuse: /' || true
  grep -h '^test result' "$log" | sed 's/^/- /' || true
} > "$out"
echo
cat "$out"
echo "written: $out"
exit "$status"
