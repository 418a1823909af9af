"""The two system calls bcc does not wrap for what skbtracer needs of
them (ring buffer maps, perf events of its own, kprobe-multi links)."""

import ctypes
import errno
import platform

BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


def syscall(table, *args):
    """The call numbered table[this machine]: its result, or -errno."""
    number = table.get(platform.machine())
    if number is None:
        return -errno.ENOSYS
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(ctypes.c_long(number), *args)
    return result if result >= 0 else -ctypes.get_errno()


def bpf(command, attr):
    """bpf(2) with attr (a ctypes buffer): the result, or -errno."""
    return syscall(BPF_SYSCALL, ctypes.c_long(command), attr, ctypes.c_uint(len(attr)))
