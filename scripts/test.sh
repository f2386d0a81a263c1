#!/usr/bin/env bash
# scripts/test.sh: pass millrace's whole test suite on a fresh Debian machine.
#
# Installs what the tests need (curl and python3, the real clients the tests
# drive; redis-server and redis-cli, from which each Redis test starts its
# own cluster on free loopback ports with scripts/redis-cluster.sh;
# PostgreSQL, of which each write-back test starts its own instance with
# scripts/postgres.sh; Python's hdrhistogram package, in var/pyvenv, which
# reads millrace load's interval logs independently; pkg-config and libssl-dev, to build the TLS client for
# PostgreSQL against the system's OpenSSL), then
# checks formatting and lints (clippy, and shellcheck on every script) and runs
# every test: unit tests of the sans-IO protocol code, and integration tests
# that start the real binary, real Redis Clusters, PostgreSQL and fake
# servers, and talk to them over loopback sockets. Last, a short fuzz pass:
# each fuzz target for FUZZ_SECONDS (default 10; 0 skips it).
#
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_packages curl openssl util-linux python3 python3-venv ca-certificates redis-server redis-tools postgresql postgresql-client shellcheck systemd pkg-config libssl-dev prometheus haproxy

step "Python's HdrHistogram, to read interval logs independently (var/pyvenv)"
hdrh_python > /dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "shellcheck: every script"
shellcheck -x scripts/*.sh tuning/millrace-tune tests/tuning/fake-ethtool

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "tests"
if cargo nextest --version > /dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi

fuzz_seconds="${FUZZ_SECONDS:-10}"
if [ "$fuzz_seconds" -gt 0 ]; then
  step "fuzz: a short pass, $fuzz_seconds s per target (scripts/fuzz.sh)"
  scripts/fuzz.sh --seconds "$fuzz_seconds"
fi
