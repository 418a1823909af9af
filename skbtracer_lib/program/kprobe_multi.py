"""kprobe-multi links through bpf(2): one BPF link attaching a program to
many functions (BPF_TRACE_KPROBE_MULTI, 5.18+ with CONFIG_FPROBE), and
asking the kernel whether it has them. bcc has no call for either."""

import ctypes
import errno
import functools
import os
import struct

from . import kernel
from .syscalls import bpf, load_return_zero

# include/uapi/linux/bpf.h
BPF_LINK_CREATE = 28
BPF_PROG_TYPE_KPROBE = 2
BPF_TRACE_KPROBE_MULTI = 42


def create_link(prog_fd, names):
    """One BPF link attaching prog_fd to every function in names: the
    link's fd, or -errno."""
    syms = (ctypes.c_char_p * len(names))(*[n.encode() for n in names])
    attr = ctypes.create_string_buffer(64)
    # prog_fd, target_fd, attach_type, flags; then kprobe_multi: flags, cnt, syms, addrs, cookies
    struct.pack_into("<IIIIIIQQQ", attr, 0, prog_fd, 0, BPF_TRACE_KPROBE_MULTI, 0,
                     0, len(names), ctypes.addressof(syms), 0, 0)
    return bpf(BPF_LINK_CREATE, attr)


def _load_empty_program():
    """A kprobe program returning 0, loaded for BPF_TRACE_KPROBE_MULTI: its
    fd, or -errno (old kernels refuse the attach type)."""
    major, minor = kernel.version()[:2]
    return load_return_zero(BPF_PROG_TYPE_KPROBE, b"skbt_probe", BPF_TRACE_KPROBE_MULTI,
                            kern_version=(major << 16) | (minor << 8))


@functools.lru_cache(maxsize=None)
def supported():
    """Does this kernel attach kprobe-multi links? Asked of the kernel as
    libbpf asks it: a link to a function that does not exist fails with
    ENOENT/ESRCH where fprobe is built in, EOPNOTSUPP where it is not
    (Debian's 6.1), EINVAL before 5.18. Without the right to ask (no root,
    e.g. --ebpf as a user): the kernel version alone."""
    prog_fd = _load_empty_program()
    if prog_fd < 0:
        if prog_fd == -errno.EPERM:
            return kernel.version() >= (5, 18)
        return False
    try:
        result = create_link(prog_fd, ["skbtracer_no_such_function_"])
    finally:
        os.close(prog_fd)
    if result >= 0:
        os.close(result)
        return True
    return result in (-errno.ENOENT, -errno.ESRCH)
