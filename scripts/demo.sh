#!/bin/sh
# The seed's node in namespaces, one datagram through the service, traced.
set -eu
cd "$(dirname "$0")/.."
./scripts/deps.sh demo
exec /usr/bin/python3 -m testbed.demo "$@"
