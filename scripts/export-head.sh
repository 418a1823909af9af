#!/bin/sh
# `scripts/export-head.sh DIR`: the files of this checkout's HEAD, as a clean
# clone checks them out, in DIR (created), for builds that must not touch
# the work tree. git archive rather than git clone: it also works as root on
# a checkout owned by another user (clone's upload-pack refuses "dubious
# ownership").
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$1
mkdir -p "$dir"
if git -c safe.directory='*' -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    if [ -n "$(git -c safe.directory='*' -C "$repo" status --porcelain --untracked-files=no)" ]; then
        echo "export-head: exporting HEAD; uncommitted changes are left out" >&2
    fi
    git -c safe.directory='*' -C "$repo" archive --format=tar HEAD | tar -C "$dir" -xf -
else
    echo "export-head: $repo is not a git checkout; copying its files" >&2
    tar -C "$repo" --exclude=./.git --exclude=./.cache --exclude=./dist -cf - . | tar -C "$dir" -xf -
fi
