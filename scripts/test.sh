#!/bin/sh
# The whole test suite (unit, host, qemu guests); non-zero on any failure.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
exec /usr/bin/python3 tests/run_all.py "$@"
