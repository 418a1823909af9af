"""Host tools run as children that die with us, and cache files written so
that an interrupted run leaves nothing half-made in place."""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Sequence

from .flavours import PrepareError


def child(argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    """subprocess.run, output captured; the child dies with us (no orphaned apt holding its locks)."""
    return subprocess.run(argv, capture_output=True, preexec_fn=die_with_parent, **kw)


def run_tool(argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    p = child(argv, text=True, **kw)
    if p.returncode != 0:
        raise PrepareError(f"{shlex.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def run_tool_bytes(argv: list[str]) -> bytes:
    p = child(argv)
    if p.returncode != 0:
        raise PrepareError(f"{shlex.join(argv)} failed: {p.stderr.decode(errors='replace')[-1000:]}")
    return p.stdout


def tool_path(name: str) -> str:
    # kmod's tools live in /usr/sbin, which a non-login PATH may lack.
    for d in ("/usr/sbin", "/sbin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return shutil.which(name) or name


def die_with_parent() -> None:
    # Runs in the child before exec: if we die without cleaning up (SIGKILL),
    # the kernel kills qemu too (PR_SET_PDEATHSIG).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        # ignore_errors: a killed run's dpkg-deb may still be writing there.
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def partial(path: Path) -> Path:
    """Where to build `path` before renaming it into place.

    Named per process so that a leftover writer from a killed run (dpkg-deb's
    own children outlive it briefly) cannot disturb this one.
    """
    return path.with_name(f"{path.name}.partial-{os.getpid()}")


def write_atomic(path: Path, data: bytes) -> None:
    tmp = partial(path)
    tmp.write_bytes(data)
    tmp.rename(path)
