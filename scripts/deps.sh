#!/bin/sh
# Install the Debian/Ubuntu packages skbtracer, its test bed and its
# packaging (make deb, tests/package) need
# (only the missing ones). Runs as root; uses no sudo.
set -eu
PACKAGES="python3-bpfcc bpfcc-tools linux-headers-amd64 python3-pyroute2 python3-tabulate
python3-pytest iproute2 iptables ebtables bpftool kmod qemu-system-x86 busybox-static
xz-utils zstd iputils-ping procps util-linux make
git build-essential debhelper dh-python lintian man-db python3-venv
libpcap0.8 tcpdump python3-scapy
python3-dpkt tshark python3-tqdm python3-dev
nftables python3-nftables conntrack ipvsadm ipset containernetworking-plugins"
[ "$(id -u)" = 0 ] || { echo "$0: run as root (sudo $0)" >&2; exit 1; }
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
# the text rows in C (skbtracer_lib/events/_rows.c): built in place, for this checkout
"$(dirname "$0")/build-rows.sh"
