#!/bin/sh
# Build the Debian package from HEAD exported to a temporary directory, so
# that no build product lands in the work tree: `scripts/build-deb.sh [DIR]`
# leaves skbtracer_VERSION_ARCH.deb in DIR (default: dist/). No root needed.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$repo/dist}")
tmp=$(mktemp -d /tmp/skbtracer-deb.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$repo/scripts/export-head.sh" "$tmp/skbtracer"
(cd "$tmp/skbtracer" && dpkg-buildpackage -us -uc -b)
mkdir -p "$out"
cp "$tmp"/skbtracer_*.deb "$out"/
ls "$out"/skbtracer_*.deb
