#!/usr/bin/env bash
# scripts/fuzz.sh: run each fuzz target (fuzz/fuzz_targets) for a bounded time.
#
# Targets: http_request (an HTTP connection fed arbitrary bytes, whole and in
# pieces, which must answer the same), chunked (the chunked decoder, whole and
# byte by byte), http_response (the load generator's response reader, whole
# and split in two, which must read the same responses), event_batch (the
# FlatBuffers and JSON ingress of POST /v1/events, verified with limits), resp
# (the RESP decoder, both protocols, each reply against its prefixes),
# proxy_header (the PROXY protocol header reader), tls_server (a TLS server
# session fed arbitrary bytes, whole and cut in two, which must end the
# same; its certificate from scripts/tls-certs.sh var/tls-test). Seeds are in fuzz/seeds/<target>; what libFuzzer finds goes
# to fuzz/corpus/<target> (not committed). A crash leaves its input in
# fuzz/artifacts/<target> and makes this script fail.
#
# cargo-fuzz passes nightly-only flags (-Z sanitizer=address); on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them.
#
# Usage: scripts/fuzz.sh [--seconds N] [TARGET...]   (default: 60 s each, every target)
set -euo pipefail
seconds=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
cd "$(dirname "$0")/.."
[ ${#targets[@]} -gt 0 ] || targets=(http_request chunked http_response event_batch resp proxy_header tls_server)
scripts/tls-certs.sh var/tls-test
export MILLRACE_FUZZ_TLS_DIR="$PWD/var/tls-test"

if ! cargo fuzz --version > /dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  echo "== fuzzing $target for $seconds s"
  mkdir -p "fuzz/corpus/$target"
  cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
done
