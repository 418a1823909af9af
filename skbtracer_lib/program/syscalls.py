"""The two system calls bcc does not wrap for what skbtracer needs of
them (ring buffer maps, perf events of its own, kprobe-multi links)."""

import ctypes
import errno
import platform
import struct

BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
# include/uapi/linux/bpf.h
BPF_PROG_LOAD = 5
ATTACH_BTF_ID_AT = 108           # union bpf_attr's attach_btf_id, for BPF_PROG_LOAD
# r0 = 0; exit: a program to ask the kernel what it accepts with
RETURN_ZERO = struct.pack("<BBhiBBhi", 0xb7, 0, 0, 0, 0x95, 0, 0, 0)


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


def prog_load(prog_type, instructions, count, name, expected_attach_type,
              kern_version=0, attach_btf_id=0, log=None):
    """BPF_PROG_LOAD of count instructions at address instructions (GPL):
    the program's fd, or -errno; log: a ctypes buffer for the verifier's
    words (log level 1)."""
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name[16], prog_ifindex, expected_attach_type
    struct.pack_into("<IIQQIIQII16sII", attr, 0, prog_type, count, instructions,
                     ctypes.addressof(license), 1 if log else 0, len(log) if log else 0,
                     ctypes.addressof(log) if log else 0, kern_version, 0, name[:15], 0,
                     expected_attach_type)
    struct.pack_into("<I", attr, ATTACH_BTF_ID_AT, attach_btf_id)
    return bpf(BPF_PROG_LOAD, attr)


def load_return_zero(prog_type, name, expected_attach_type, **kw):
    """A program returning 0, loaded as prog_type: its fd, or -errno."""
    insns = ctypes.create_string_buffer(RETURN_ZERO, len(RETURN_ZERO))
    return prog_load(prog_type, ctypes.addressof(insns), len(RETURN_ZERO) // 8, name,
                     expected_attach_type, **kw)
