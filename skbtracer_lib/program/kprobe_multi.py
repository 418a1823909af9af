"""kprobe-multi links through bpf(2): one BPF link attaching a program to
many functions (BPF_TRACE_KPROBE_MULTI, 5.18+ with CONFIG_FPROBE), and
asking the kernel whether it has them. bcc has no call for either."""

import ctypes
import errno
import functools
import os
import struct

from . import kernel
from .syscalls import bpf

# include/uapi/linux/bpf.h
BPF_PROG_LOAD = 5
BPF_LINK_CREATE = 28
BPF_PROG_TYPE_KPROBE = 2
BPF_TRACE_KPROBE_MULTI = 42
# r0 = 0; exit
RETURN_ZERO = struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0)


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
    insns = ctypes.create_string_buffer(RETURN_ZERO, len(RETURN_ZERO))
    license = ctypes.create_string_buffer(b"GPL")
    major, minor = kernel.version()[:2]
    attr = ctypes.create_string_buffer(128)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name[16], prog_ifindex, expected_attach_type
    struct.pack_into("<IIQQIIQII16sII", attr, 0, BPF_PROG_TYPE_KPROBE, 2,
                     ctypes.addressof(insns), ctypes.addressof(license), 0, 0, 0,
                     (major << 16) | (minor << 8), 0, b"skbt_probe", 0, BPF_TRACE_KPROBE_MULTI)
    return bpf(BPF_PROG_LOAD, attr)


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
