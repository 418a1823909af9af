"""BTF-typed raw tracepoints (tp_btf) through bpf(2): a program bcc compiled,
loaded as BPF_PROG_TYPE_TRACING with expected_attach_type BPF_TRACE_RAW_TP
and the BTF id of the tracepoint's btf_trace_<event> typedef, then attached
with BPF_RAW_TRACEPOINT_OPEN. The verifier knows the arguments' types, so a
program may read an sk_buff's fields by plain loads instead of
bpf_probe_read_kernel calls.

bcc cannot load these itself (0.26 at least): bcc_prog_load_xattr() sets
expected_attach_type from the program's name prefix (kfunc__, lsm__, ...),
0 for any other name, overwriting the one asked for; with 0 it looks
for a kernel function of the tracepoint's name."""

import ctypes
import errno
import functools
import os
import struct

from . import kernel
from .btf import TYPEDEF
from .syscalls import RETURN_ZERO, bpf, prog_load

# include/uapi/linux/bpf.h
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23
LOG_SIZE = 1 << 20
CHECK_EVENT = "kfree_skb"        # any tracepoint of vmlinux would do
# how a probe plan's tracepoints are attached (probes.Probe.attach's types)
RAW = "raw_tracepoint"
TP_BTF = "tp_btf"
# SKBTRACER_TP_BTF=0: raw tracepoints anyway (the rows-alike test and
# bench/reject_cost.py compare the two on one commit)
FORCE_RAW_ENV = "SKBTRACER_TP_BTF"


class TpBtfError(Exception):
    """The kernel refused a load or an attach: errno and the verifier's last lines."""

    def __init__(self, what, err, log=""):
        self.errno = err
        self.log = log
        lines = [l for l in log.splitlines() if l.strip()][-4:]
        super().__init__("%s: %s%s" % (what, os.strerror(err),
                                        " (verifier: %s)" % " | ".join(lines) if lines else ""))


def target_id(event):
    """BTF id of btf_trace_<event> in vmlinux, or None (no BTF, or a
    tracepoint of a module: those would need the module's BTF fd too)."""
    btf = kernel.btf()
    return btf.vmlinux.find("btf_trace_" + event, (TYPEDEF,)) if btf else None


def load_instructions(instructions, count, event, name=b"tp_btf"):
    """Load count BPF instructions at address instructions as a tp_btf
    program for event: its fd; TpBtfError when the kernel refuses."""
    btf_id = target_id(event)
    if not btf_id:
        raise TpBtfError("tp_btf %s: no btf_trace_%s in vmlinux BTF" % (event, event),
                         errno.ENOENT)
    return load_tracing(instructions, count, btf_id, BPF_TRACE_RAW_TP, name,
                        "tp_btf %s: load" % event)


def load_tracing(instructions, count, btf_id, attach_type, name, what):
    """BPF_PROG_LOAD of a BPF_PROG_TYPE_TRACING program attaching to
    btf_id as attach_type: its fd. A refusal is asked again with the
    verifier's log for TpBtfError to tell, with the first errno (a log
    too small for the verifier's words would be ENOSPC)."""
    fd = prog_load(BPF_PROG_TYPE_TRACING, instructions, count, name, attach_type,
                   attach_btf_id=btf_id)
    if fd >= 0:
        return fd
    log = ctypes.create_string_buffer(LOG_SIZE)
    again = prog_load(BPF_PROG_TYPE_TRACING, instructions, count, name, attach_type,
                      attach_btf_id=btf_id, log=log)
    if again >= 0:
        return again
    raise TpBtfError(what, -fd, log.value.decode("ascii", "replace"))


def load(bpf_module, fn_name, event):
    """fn_name of a bcc BPF object (compiled, map fds in place), loaded
    as a tp_btf program for event: its fd."""
    from bcc.libbcc import lib
    fn = fn_name.encode() if isinstance(fn_name, str) else fn_name
    start = lib.bpf_function_start(bpf_module.module, fn)
    if not start:
        raise TpBtfError("tp_btf %s: no function %s" % (event, fn_name), errno.ENOENT)
    size = lib.bpf_function_size(bpf_module.module, fn)
    return load_instructions(start, size // 8, event, fn)


def attach(prog_fd, event=""):
    """Attach a loaded tp_btf program (the tracepoint is the one it was
    loaded for): the link's fd, closing which detaches it."""
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, 0, prog_fd)    # name: NULL, from attach_btf_id
    link = bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    if link < 0:
        raise TpBtfError("tp_btf %s: attach" % event, -link)
    return link


@functools.lru_cache(maxsize=None)
def check():
    """Does this kernel load and attach tp_btf programs? (True, '') or
    (False, why), asked with an empty program on CHECK_EVENT."""
    insns = ctypes.create_string_buffer(RETURN_ZERO, len(RETURN_ZERO))
    try:
        prog = load_instructions(ctypes.addressof(insns), len(RETURN_ZERO) // 8, CHECK_EVENT,
                                 b"skbt_probe")
        try:
            os.close(attach(prog, CHECK_EVENT))
        finally:
            os.close(prog)
    except TpBtfError as e:
        return False, str(e)
    return True, ""


def usable(events):
    """(True, '') when each of events can have a tp_btf program on this
    kernel, else (False, why not)."""
    missing = [event for event in events if not target_id(event)]
    if missing:
        return False, "no btf_trace_%s in vmlinux BTF" % missing[0]
    return check()
