"""Run commands inside one of Debian's kernels, booted under qemu.

The host kernel has no kprobes, so anything that needs them runs in a guest:
Debian's own kernel ("flavour" 6.1, 5.10 or 6.12) booted by qemu with TCG,
the host's / shared read-only over 9p under a tmpfs overlay (so every host
path, the repo included, is visible at the same place), and a second,
writable 9p share that carries the command in and its output out.

    from testbed import qemu
    r = qemu.run("uname -r", flavour="6.1")
    r.returncode, r.stdout, r.stderr, r.seconds

    /usr/bin/python3 -m testbed.qemu [--flavour 6.1] -- CMD ARGS...
    /usr/bin/python3 -m testbed.qemu --prepare 6.1 5.10 6.12
    /usr/bin/python3 -m testbed.qemu --list

On this machine wrap every run in the shared lock (one guest at a time):
    flock /work/guest.lock /usr/bin/python3 -m testbed.qemu --flavour 6.1 -- CMD

Kernels, module trees and initramfs images are cached in <repo>/.cache/guest/.
Nothing the guest writes reaches the host except the command's stdout, stderr
and exit code: its writes land in a tmpfs overlay that dies with it. In the
guest, TESTBED_GUEST is set to the flavour, and /lib/modules/$(uname -r) holds
the kernel's modules with build/source links to its headers (for bcc).

  flavours.py    the kernels, their cache, what each is known to do
  cache.py       prepare(): fetch, extract and cache a flavour (apt.py,
                 kernelfiles.py, initramfs.py; tools.py for host tools)
  boot.py        run(): boot, run one command, power off
  __main__.py    the command line
"""

from .boot import RC_GUEST_FAILED, RC_TIMEOUT, GuestResult, Terminated, run
from .cache import cached, prepare
from .flavours import FLAVOURS, Expected, Flavour, Kernel, PrepareError
from .initramfs import static_busybox

__all__ = ["FLAVOURS", "RC_GUEST_FAILED", "RC_TIMEOUT", "Expected", "Flavour", "GuestResult",
           "Kernel", "PrepareError", "Terminated", "cached", "prepare", "run", "static_busybox"]
