#!/bin/sh
# Build skbtracer_lib/events/_rows (the text rows in C, see _rows.c's first
# comment) in place, for /usr/bin/python3 (bcc's Python). Without it
# skbtracer makes the same rows in Python, slower. Needs a C compiler and
# python3-dev.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
suffix=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
${CC:-cc} ${CFLAGS:--O2 -g} -Wall -Wextra -Werror -shared -fPIC -I"$include" \
    -o "skbtracer_lib/events/_rows$suffix" \
    skbtracer_lib/events/_rows.c skbtracer_lib/events/_rows_spec.c skbtracer_lib/events/_rows_text.c
