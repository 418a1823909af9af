#!/bin/sh
# Install the Debian/Ubuntu packages (only the missing ones) that one use of
# the checkout needs, and build the text rows' C module in place:
#   deps.sh trace     tracing: bcc, kernel headers, libpcap (filter
#                     expressions), python3-dpkt (-w), python3-tqdm (the
#                     --all/--func bar), python3-nftables (--nftrace);
#                     the C rows only where a compiler
#                     and python3-dev are already there
#   deps.sh demo      trace, and the test bed's node (scripts/demo.sh):
#                     pyroute2, iproute2, iptables, ebtables, kmod
#   deps.sh package   make deb and tests/package: debhelper, dh-python,
#                     lintian, git, a compiler and python3-dev, python3-venv
#   deps.sh test      everything the tests use (all of the above, qemu and
#                     busybox for the guests, tcpdump, tshark, scapy, ...)
#   deps.sh           the same as test (scripts/test.sh, make deps)
# Runs as root; uses no sudo.
set -eu
TRACE="python3-bpfcc linux-headers-amd64 libpcap0.8 python3-dpkt python3-tqdm python3-nftables"
DEMO="$TRACE python3-pyroute2 iproute2 iptables ebtables kmod"
PACKAGE="git make build-essential python3-dev debhelper dh-python lintian man-db python3-venv"
TEST="$DEMO $PACKAGE bpfcc-tools python3-tabulate python3-pytest bpftool qemu-system-x86
busybox-static xz-utils zstd iputils-ping procps util-linux tcpdump python3-scapy tshark
nftables python3-nftables conntrack ipvsadm ipset containernetworking-plugins"
use=${1:-test}
case "$use" in
    trace) PACKAGES=$TRACE ;;
    demo) PACKAGES=$DEMO ;;
    package) PACKAGES=$PACKAGE ;;
    test) PACKAGES=$TEST ;;
    *) echo "$0: unknown use '$use' (trace, demo, package or test)" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "$0: one use at most (trace, demo, package or test)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: run as root (sudo $0 $use)" >&2; exit 1; }
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
fi
# the text rows in C (skbtracer_lib/events/_rows.c): built in place, for this
# checkout; tracing and the demo do without them (the same rows in Python)
include=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
case "$use" in
    trace|demo)
        if command -v "${CC:-cc}" >/dev/null && [ -e "$include/Python.h" ]; then
            "$(dirname "$0")/build-rows.sh"
        fi ;;
    *) "$(dirname "$0")/build-rows.sh" ;;
esac
