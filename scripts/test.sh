#!/bin/sh
# The whole test suite (unit, host, package, every qemu guest); non-zero on
# any failure, on a stage that did not run and on a skip tests/allowed_skips.py
# does not list (tests/README.md). Arguments go to tests/run_all.py.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh
# deps.sh built the text rows in C: their tests must run, not skip
SKBTRACER_REQUIRE_C_ROWS=1 exec /usr/bin/python3 tests/run_all.py "$@"
