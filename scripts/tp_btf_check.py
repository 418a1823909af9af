#!/usr/bin/python3
"""Can this kernel (and the installed bcc) run BTF-typed raw tracepoints
(tp_btf), whose programs read an sk_buff's fields by plain loads? Asks
the kernel, as root, and prints what it says:

    /usr/bin/python3 scripts/tp_btf_check.py [event]    (default: kfree_skb)

  1. bcc's own path: BPF.load_func(fn, BPF.TRACING, TRACE_RAW_TP) (bcc
     0.26 drops the attach type: expected to fail);
  2. an empty tp_btf program through bpf(2): load, attach;
  3. the same with the skb's head, data and network_header read by plain
     loads and the IP header by one bpf_probe_read_kernel;
  4. 8-byte plain loads across neighbouring members (from protocol, within
     sk_buff's headers group; from tail, a top-level member, into the
     next): which spans the verifier allows (it checks member bounds);
  5. for comparison, fentry on the kernel function consume_skb.
Exit status 0 when 3 loads and attaches, 1 otherwise.
"""

import ctypes
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skbtracer_lib.program import kernel, layout, tp_btf  # noqa: E402
from skbtracer_lib.program.btf import FUNC  # noqa: E402

# the skb's fields by plain loads (offsets from BTF), the packet by one read
DIRECT = """
int direct_loads(u64 *ctx)
{
    void *skb = (void *)ctx[SKB_ARG];
    unsigned char *head = *(unsigned char **)(skb + %(L_SKB_HEAD_OFF)d);
    u16 nh = *(u16 *)(skb + %(L_SKB_NETWORK_HEADER_OFF)d);
    u8 ip[20] = {};
    bpf_probe_read_kernel(ip, sizeof(ip), head + nh);
    return ip[0] & 1;
}
int empty(u64 *ctx) { return 0; }
"""
# one 8-byte load at a field's offset, in assembly (bcc would rewrite a C dereference)
SPAN_LOAD = """
int span_load(u64 *ctx)
{
    u64 v;
    asm volatile("%%0 = *(u64 *)(%%1 + %%2)" : "=r"(v) : "r"(ctx[SKB_ARG]), "i"(%d));
    return v & 1;
}
"""
FENTRY_FUNCTION = "consume_skb"
BPF_TRACE_FENTRY = 24


def say(step, result):
    print("%-48s %s" % (step, result))


def try_bcc(bpf, event):
    """bcc's own load of a TRACING program for TRACE_RAW_TP."""
    from bcc import BPF, BPFAttachType
    try:
        bpf.load_func("empty", BPF.TRACING, attach_type=BPFAttachType.TRACE_RAW_TP)
        return "loaded (bcc can load tp_btf itself)"
    except Exception as e:     # bcc raises plain Exception
        return "refused: %s" % str(e).strip()


def try_load_attach(load):
    """load() -> prog fd, then attach: 'ok' or what the kernel said."""
    try:
        prog = load()
    except tp_btf.TpBtfError as e:
        return False, "load refused: %s" % e
    try:
        os.close(tp_btf.attach(prog))
        return True, "loaded and attached"
    except tp_btf.TpBtfError as e:
        return False, "loaded; attach refused: %s" % e
    finally:
        os.close(prog)


def fentry(bpf):
    btf = kernel.btf()
    func_id = btf.vmlinux.find(FENTRY_FUNCTION, (FUNC,)) if btf else None
    if not func_id:
        return False, "no BTF FUNC %s" % FENTRY_FUNCTION
    from bcc.libbcc import lib
    start = lib.bpf_function_start(bpf.module, b"empty")
    size = lib.bpf_function_size(bpf.module, b"empty")
    return try_load_attach(lambda: tp_btf.load_tracing(
        start, size // 8, func_id, BPF_TRACE_FENTRY, b"fentry_check", "fentry load"))


def main(argv):
    event = argv[0] if argv else tp_btf.CHECK_EVENT
    print("kernel %s" % os.uname().release)
    try:
        import bcc
        print("bcc %s" % getattr(bcc, "__version__", "?"))
    except ImportError:
        print("bcc: not importable by %s" % sys.executable)
        return 1
    if not kernel.btf():
        say("vmlinux BTF", "absent: no tp_btf here")
        return 1
    say("btf_trace_%s" % event, "BTF id %s" % tp_btf.target_id(event))
    ok, why = tp_btf.check()
    say("empty tp_btf on %s" % tp_btf.CHECK_EVENT, "loaded and attached" if ok else why)

    headers = kernel.find_header_tree()
    if headers.kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = headers.kernel_source
    params = kernel.btf().vmlinux.typedef_func_params("btf_trace_" + event) or []
    skb_arg = next((i - 1 for i, (_n, t) in enumerate(params)
                    if kernel.btf().vmlinux.pointee_struct(t) == ("sk_buff", 1)), None)
    if skb_arg is None:
        say("%s's sk_buff argument" % event, "none: give a tracepoint with an skb")
        return 1
    text = "#define SKB_ARG %d\n" % skb_arg + DIRECT % layout.Layouts("btf").defines
    from bcc import BPF
    bpf = BPF(text=text)
    say("bcc load_func(TRACING, TRACE_RAW_TP)", try_bcc(bpf, event))
    ok, result = try_load_attach(lambda: tp_btf.load(bpf, "direct_loads", event))
    say("tp_btf %s, skb fields by plain loads" % event, result)
    defines = layout.Layouts("btf").defines
    for field in ("SKB_PROTOCOL", "SKB_TAIL"):
        span = BPF(text="#define SKB_ARG %d\n" % skb_arg
                   + SPAN_LOAD % defines["L_%s_OFF" % field])
        say("tp_btf %s, 8 bytes from %s" % (event, field.lower()),
            try_load_attach(lambda: tp_btf.load(span, "span_load", event))[1])
        span.cleanup()
    say("fentry %s (for comparison)" % FENTRY_FUNCTION, fentry(bpf)[1])
    bpf.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("tp_btf_check: needs root (bpf(2))")
    sys.exit(main(sys.argv[1:]))
