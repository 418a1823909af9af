#!/usr/bin/python3
"""Empty BPF programs on the hooks skbtracer would attach for the same
arguments: the floor that skbtracer's cost per probe hit is measured
against (bench/reject_cost.py). Prints skbtracer's header once attached
(so bench/node.py's DrainedTracer runs it as it runs skbtracer), detaches
on SIGINT/SIGTERM.

    /usr/bin/python3 bench/empty_probes.py [--raw] [--reads 1|2|btf] [skbtracer options]

--reads N: instead of returning at once, each program makes exactly N
24-byte bpf_probe_read_kernel calls: the sk_buff from its head pointer on
(head, data: what a filter must read first), then 24 bytes at data (the
packet's first bytes, as a filter then reads the IP header). These are the
reads a filter on raw tracepoints cannot avoid. Hooks whose skb argument
these programs cannot name (kretprobes, struct sk_buff ** arguments) get
the empty program.

Tracepoints are attached as skbtracer attaches them here: as BTF-typed
raw tracepoints (tp_btf, skbtracer_lib/program/tp_btf.py) where the kernel
runs them, else as raw tracepoints; --raw: as raw tracepoints anyway.

--reads btf: the tracepoints get tp_btf programs that load the skb's data
pointer by a plain load (the verifier knows the argument is an sk_buff)
and make one 24-byte bpf_probe_read_kernel at data: what a filter on
tp_btf cannot avoid. Kprobes get the 2-read programs.
"""

import os
import re
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skbtracer_lib import config
from skbtracer_lib.events.textrow import HEADER  # noqa: E402
from skbtracer_lib.program import (
    kernel,  # noqa: E402
    source,
    tp_btf,
)

EMPTY = """
int empty_kprobe(struct pt_regs *ctx) { return 0; }
int empty_raw(struct bpf_raw_tracepoint_args *ctx) { return 0; }
"""
# the N-read references: READ(skb) reads the skb's head and data pointers,
# then (READS 2) 24 bytes at data; one program per skb argument position
READS = """
#define READ(skb) ({ u64 __b[3] = {}; \\
    bpf_probe_read_kernel(__b, 24, (void *)(skb) + SKB_HEAD_OFF); \\
    if (READS > 1) bpf_probe_read_kernel(__b, 24, (void *)__b[(SKB_DATA_OFF - SKB_HEAD_OFF) / 8]); \\
    __b[0]; })
#define RAW(argi) int reads_raw_##argi(struct bpf_raw_tracepoint_args *ctx) \\
    { READ(ctx->args[argi]); return 0; }
#define KPROBE(argn) int reads_kprobe_##argn(struct pt_regs *ctx) \\
    { READ(PT_REGS_PARM##argn(ctx)); return 0; }
#define BTF_RAW(argi) int btf_raw_##argi(u64 *ctx) \\
    { u64 __b[3] = {}; void *skb = (void *)ctx[argi]; \\
      bpf_probe_read_kernel(__b, 24, *(void **)(skb + SKB_DATA_OFF)); return 0; }
RAW(0) RAW(1) RAW(2) RAW(3)
BTF_RAW(0) BTF_RAW(1) BTF_RAW(2) BTF_RAW(3)
KPROBE(1) KPROBE(2) KPROBE(3) KPROBE(4) KPROBE(5)
"""


def reads_program(reads):
    """The C of the N-read references, with this kernel's sk_buff layout."""
    from skbtracer_lib.program import layout
    defines = layout.Layouts("btf").defines
    head, data = defines["L_SKB_HEAD_OFF"], defines["L_SKB_DATA_OFF"]
    if data - head not in (0, 8, 16):
        raise SystemExit("empty_probes: sk_buff's head and data are not within 24 bytes")
    return "#define READS %d\n#define SKB_HEAD_OFF %d\n#define SKB_DATA_OFF %d\n%s" % (
        reads, head, data, READS)


TRACEPOINTS = (tp_btf.RAW, tp_btf.TP_BTF)


def program_for(probe, attach_type, reads):
    """The function to attach: the N-read reference where the skb
    argument's position is known from skbtracer's own instantiation."""
    if not reads or attach_type == "kretprobe":
        return "empty_raw" if attach_type in TRACEPOINTS else "empty_kprobe"
    if attach_type in TRACEPOINTS:
        m = re.match(r"ROUTE_RAW_TP\(\d+, (\d+)\)", probe.c_line)
        prefix = "btf_raw_" if reads == "btf" else "reads_raw_"
        return prefix + (m.group(1) if m else "0")     # kfree_skb, consume_skb: arg 0
    m = re.match(r"ROUTE_KPROBE\((\d)\)", probe.c_line)
    return "reads_kprobe_%s" % m.group(1) if m else "empty_kprobe"


def main(argv):
    from bcc import BPF
    reads = 0
    raw = argv[:1] == ["--raw"]
    if raw:
        argv = argv[1:]
    if argv[:1] == ["--reads"]:
        reads, argv = argv[1] if argv[1] == "btf" else int(argv[1]), argv[2:]
    cfg = config.parse_args(argv)
    plan = source.Program(cfg, tp_btf_refused="--raw" if raw else None).plan
    headers = kernel.find_header_tree()     # bcc's includes, found as skbtracer finds them
    if headers.kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = headers.kernel_source
    text = "#include <uapi/linux/ptrace.h>\n" + EMPTY + (
        reads_program(2 if reads == "btf" else reads) if reads else "")
    bpf = BPF(text=text)
    attached = 0
    tp_btf_fds = []
    for probe in plan.probes:
        for attach_type, target, _fn in probe.attach:
            fn = program_for(probe, attach_type, reads)
            try:
                if attach_type == "kprobe":
                    bpf.attach_kprobe(event=target, fn_name=fn)
                elif attach_type == "kretprobe":
                    bpf.attach_kretprobe(event=target, fn_name=fn)
                elif attach_type == tp_btf.TP_BTF or reads == "btf":
                    # as skbtracer attaches them here (the 1- and 2-read
                    # programs load as tp_btf too), or the tp_btf reference
                    tp_btf_fds.append(tp_btf.load(bpf, fn, target))
                    tp_btf_fds.append(tp_btf.attach(tp_btf_fds[-1], target))
                else:
                    bpf.attach_raw_tracepoint(tp=target, fn_name=fn)
                attached += 1
            except tp_btf.TpBtfError as e:
                raise SystemExit("empty_probes: %s" % e)   # the reference is not what it says
            except Exception:
                pass            # as skbtracer skips what cannot attach
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    sys.stdout.write(HEADER + "\n")
    sys.stdout.flush()
    sys.stderr.write("empty_probes: %d hooks\n" % attached)
    while not stop:
        signal.pause()
    for fd in reversed(tp_btf_fds):
        os.close(fd)
    bpf.cleanup()
    sys.stderr.write("skbtracer: 0 rows printed, 0 events lost\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
