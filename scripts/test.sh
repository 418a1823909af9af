#!/bin/sh
# The whole test suite (unit, host, qemu guests); non-zero on any failure.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
# deps.sh built the text rows in C: their tests must run, not skip
SKBTRACER_REQUIRE_C_ROWS=1 exec /usr/bin/python3 tests/run_all.py "$@"
