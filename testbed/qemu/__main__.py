"""python3 -m testbed.qemu: run a command in a flavour's kernel, prepare
the kernels, or list which are cached (see __init__.py)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Sequence

from .boot import QBOOT, QEMU, RC_GUEST_FAILED, Terminated, run
from .cache import cached, prepare
from .flavours import FLAVOURS, PrepareError


def _status(name: str) -> tuple[bool, str]:
    """Whether a flavour is cached and bootable here, and what it is."""
    k = cached(name)
    if k is None:
        return False, "not cached (run --prepare)"
    detail = f"{k.release}, {k.kernel.name}, headers {k.build}"
    missing = [p for p in (QBOOT, shutil.which(QEMU) or QEMU) if not os.path.exists(p)]
    if missing:
        return False, f"{detail}; missing {', '.join(missing)}"
    return True, detail


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m testbed.qemu",
        description="Run a command in a Debian kernel under qemu, or prepare the kernels.",
    )
    ap.add_argument("--flavour", default="6.1", choices=FLAVOURS)
    ap.add_argument("--timeout", type=float, default=900, help="seconds, boot included (default 900)")
    ap.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
    ap.add_argument("--cwd", help="directory to run in (default: the current one)")
    ap.add_argument("--prepare", nargs="*", metavar="FLAVOUR", help="only fetch and cache these flavours (default all)")
    ap.add_argument("--list", action="store_true", help="show which flavours are cached and usable")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    if args.list:
        for name in FLAVOURS:
            ok, detail = _status(name)
            print(f"{name:5} {'OK  ' if ok else 'NO  '} {detail}")
        return 0
    if args.prepare is not None:
        failed = 0
        for name in args.prepare or list(FLAVOURS):
            t0 = time.monotonic()
            try:
                k = prepare(name)
            except (PrepareError, ValueError, OSError) as e:
                failed += 1
                print(f"{name:5} FAIL {e}", flush=True)
            else:
                print(f"{name:5} OK   {k.release} ({k.kernel.name}, {time.monotonic() - t0:.1f} s)", flush=True)
        return 1 if failed else 0
    if not command:
        ap.error("nothing to run: give -- CMD ARGS..., --prepare or --list")
    try:
        result = run(command, args.flavour, args.timeout, args.cwd, None, args.memory, stream=True)
    except PrepareError as e:
        print(f"[testbed.qemu] cannot prepare flavour {args.flavour}: {e}", file=sys.stderr)
        return RC_GUEST_FAILED
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    if result.failure:
        # Streaming showed the command's output; the diagnosis is ours.
        print(result.failure, file=sys.stderr, end="")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
