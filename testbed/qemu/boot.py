"""Boot a prepared kernel under qemu (TCG), run one command in it, power
off: the command goes in and its output and exit code come out through a
writable 9p share; no qemu outlives run()."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .cache import prepare
from .flavours import SCRIPTS, Kernel
from .initramfs import static_busybox
from .tools import die_with_parent

QEMU = "qemu-system-x86_64"
QBOOT = "/usr/share/qemu/qboot.rom"
# mitigations=off: TCG emulates no speculation, and page-table isolation
# would flush qemu's soft TLB on every syscall.
KERNEL_ARGS = "console=ttyS0 rdinit=/init panic=-1 mitigations=off loglevel=4"

# Return codes when the command's own could not be had.
RC_TIMEOUT = 124
RC_GUEST_FAILED = 125


@dataclasses.dataclass
class GuestResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall time of the whole run, boot included
    boot_seconds: float | None = None  # qemu start until the command started
    timed_out: bool = False
    console: str = ""  # the guest's kernel log (serial console)
    failure: str = ""  # why there is no exit code of the command's (also in stderr)


def run(
    command: str | Sequence[str],
    flavour: str = "6.1",
    timeout: float = 900,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    memory_mb: int = 2048,
    *,
    stream: bool = False,
) -> GuestResult:
    """Boot the flavour's kernel, run command with /bin/sh -c in it, power off.

    command: a shell string, or an argv list (quoted for the shell).
    cwd: directory to run in (default: ours; the host's paths are the guest's).
    env: extra environment on top of the guest's PATH, HOME, LANG.
    stream: copy the command's output to our stdout/stderr as it comes.
    The timeout covers boot and command. No qemu outlives this call: it is
    killed on timeout, on any exception (KeyboardInterrupt included; SIGTERM
    and SIGHUP become Terminated while run() is in the main thread), and by
    the kernel if this process dies. When the command's exit code cannot be
    had, returncode is RC_TIMEOUT (124) or RC_GUEST_FAILED (125) and stderr
    ends with the reason and the tail of the kernel log (also in .failure).
    Raises PrepareError if the flavour cannot be fetched.
    """
    if not isinstance(command, str):
        command = shlex.join(command)
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    kernel = prepare(flavour)
    start = time.monotonic()
    with _terminate_as_exception(), tempfile.TemporaryDirectory(prefix="testbed-qemu-") as tmp:
        share = Path(tmp) / "share"
        share.mkdir()
        _write_share(share, kernel, command, cwd, env or {})
        logs = Path(tmp) / "console.log", Path(tmp) / "qemu.log"
        argv = _qemu_argv(kernel, share, logs[0], memory_mb)
        boot = _Boot(share, start, timeout, stream)
        qemu_rc = boot.run(argv, logs[1])
        return boot.result(kernel, logs, qemu_rc)


class _Boot:
    """One qemu run: started, watched until the command's exit code is in
    the share (or the time is up), killed, its outcome read back."""

    def __init__(self, share: Path, start: float, timeout: float, stream: bool):
        self.share, self.start, self.timeout, self.stream = share, start, timeout, stream
        self.timed_out = False
        self.boot_seconds: float | None = None
        self.tails = {"stdout": 0, "stderr": 0}

    def run(self, argv: list[str], qemu_log: Path) -> int | None:
        """qemu's exit code (None: it never started)."""
        proc = None
        try:
            with open(qemu_log, "wb") as log:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
                )
            self._watch(proc)
        finally:
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()  # our own child, by PID
                proc.wait()
        if self.stream:
            _stream(self.share, self.tails)
        return proc.returncode if proc is not None else None

    def _watch(self, proc: subprocess.Popen) -> None:
        rc_seen = None
        while proc.poll() is None:
            now = time.monotonic()
            if self.boot_seconds is None and (self.share / "started").exists():
                self.boot_seconds = now - self.start
            if self.stream:
                _stream(self.share, self.tails)
            if rc_seen is None and (self.share / "rc").exists():
                rc_seen = now
            # The guest powers off right after writing rc; don't wait on a hung poweroff.
            if rc_seen is not None and now - rc_seen > 10:
                return
            if now - self.start > self.timeout:
                self.timed_out = True
                return
            time.sleep(0.05)

    def result(self, kernel: Kernel, logs: tuple[Path, Path], qemu_rc: int | None) -> GuestResult:
        share = self.share
        seconds = time.monotonic() - self.start
        if self.boot_seconds is None and (share / "started").exists():
            self.boot_seconds = seconds
        stdout = _read_text(share / "stdout")
        stderr = _read_text(share / "stderr")
        log_text = _read_text(logs[0])
        rc_text = _read_text(share / "rc").strip()
        failure = ""
        if rc_text.lstrip("-").isdigit():
            returncode = int(rc_text)
        else:
            returncode = RC_TIMEOUT if self.timed_out else RC_GUEST_FAILED
            why = (f"timed out after {self.timeout:g} s" if self.timed_out
                   else f"guest ended without an exit code (qemu exit {qemu_rc})")
            tail = "\n".join(log_text.splitlines()[-60:])
            qemu_text = _read_text(logs[1]).strip()
            failure = f"[testbed.qemu] {why}; flavour {kernel.flavour} ({kernel.release})\n"
            if qemu_text:
                failure += f"[testbed.qemu] qemu said:\n{qemu_text[-2000:]}\n"
            failure += f"[testbed.qemu] kernel log tail:\n{tail}\n"
            stderr += "\n" + failure
        return GuestResult(returncode, stdout, stderr, seconds, self.boot_seconds, self.timed_out, log_text, failure)


def _write_share(share: Path, kernel: Kernel, command: str, cwd: str, env: Mapping[str, str]) -> None:
    params = {
        "FLAVOUR": kernel.flavour,
        "KVER": kernel.release,
        "MODDIR": str(kernel.modules),
        "BUSYBOX": str(static_busybox()),
        "CWD": cwd,
    }
    (share / "params.sh").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in params.items()))
    for k in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"bad environment variable name {k!r}")
    (share / "env.sh").write_text("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items()))
    (share / "command").write_text(command)
    shutil.copy(SCRIPTS / "stage2.sh", share / "stage2.sh")


def _qemu_argv(kernel: Kernel, share: Path, console: Path, memory_mb: int) -> list[str]:
    def esc(path: Path) -> str:
        return str(path).replace(",", ",,")  # qemu option values escape commas by doubling

    return [
        QEMU,
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-smp", "2",
        "-m", str(memory_mb),
        "-bios", QBOOT,
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-nic", "none",
        "-serial", f"file:{console}",
        "-no-reboot",  # a panic (panic=-1) or reboot ends qemu
        "-kernel", str(kernel.kernel),
        "-initrd", str(kernel.initramfs),
        "-append", KERNEL_ARGS,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={esc(share)},mount_tag=testbed,security_model=none",
    ]  # fmt: skip


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived during run()."""


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    # By default SIGTERM/SIGHUP end Python without running `finally`; make
    # them an exception for the duration of run() so qemu is killed and the
    # temp dir removed. Only the main thread can set handlers, and only
    # handlers nobody else installed are replaced.
    def handler(signum, _frame):
        raise Terminated(f"signal {signum}")

    replaced = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                replaced[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in replaced.items():
            signal.signal(sig, old)


def _stream(share: Path, tails: dict[str, int]) -> None:
    for name, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        try:
            with open(share / name, "rb") as f:
                f.seek(tails[name])
                data = f.read()
        except FileNotFoundError:
            continue
        if data:
            tails[name] += len(data)
            out.buffer.write(data)
            out.flush()


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""
