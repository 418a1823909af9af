"""The C text: skbtracer.c with the generated #defines before it and the
probe lines after it, for the flags and the running kernel."""

import os
import sys

from . import kernel, layout, macros, probes, recorder, tp_btf
from ..events import reader
from ..events import tunnel
from ..events.conntrack import CT_STATES
from ..events.decode import EVENT_SIZE, swap16
from ..events.vocabulary import L4_NUMBERS

C_SOURCE_NAME = "skbtracer.c"
KEEP_ENTRIES = 65536
STACK_ENTRIES = 16384
# -w: struct capture_t (a u64, the event, an 8-byte head, the bytes) is one
# per-CPU map value, and the kernel refuses values over 32 KiB
CAPTURE_VALUE_MAX = 32768
CAPTURE_BYTES_MAX = CAPTURE_VALUE_MAX - 8 - EVENT_SIZE - 8


def capture_bytes(snaplen):
    """Packet bytes the kernel copies per row for --snaplen."""
    return min(snaplen, CAPTURE_BYTES_MAX)

def c_source_path():
    """skbtracer.c next to skbtracer.py (a checkout), else where setup.cfg
    installs it."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.path.join(here, C_SOURCE_NAME),
                      os.path.join(sys.prefix, "share", "skbtracer", C_SOURCE_NAME)):
        if os.path.isfile(candidate):
            return candidate
    raise kernel.KernelError("cannot find %s next to skbtracer.py" % C_SOURCE_NAME)


def filter_defines(cfg):
    """The filters as numbers, in the byte order the kernel's packet bytes
    have when loaded as little-endian integers."""
    d = {}
    if cfg.addr is not None:
        packed = cfg.addr.packed
        if cfg.addr.version == 4:
            d[macros.FILTER_ADDR4] = "%dU" % int.from_bytes(packed, "little")
        else:
            d[macros.FILTER_ADDR6_0] = "%dULL" % int.from_bytes(packed[:8], "little")
            d[macros.FILTER_ADDR6_1] = "%dULL" % int.from_bytes(packed[8:], "little")
    if cfg.proto == "icmp":
        d[macros.FILTER_ICMP] = 1
    elif cfg.proto in ("tcp", "udp"):
        d[macros.FILTER_L4PROTO] = L4_NUMBERS[cfg.proto]
    if cfg.port is not None:
        d[macros.FILTER_PORT] = swap16(cfg.port)
    if cfg.icmpid is not None:
        d[macros.FILTER_ICMPID] = swap16(cfg.icmpid)
    if cfg.pid is not None:
        d[macros.FILTER_PID] = cfg.pid
    if cfg.ct_states:
        d[macros.FILTER_CT_STATES] = sum(CT_STATES[word] for word in cfg.ct_states)
    if cfg.ct_mark is not None:
        d[macros.FILTER_CT_MARK] = "%dU" % cfg.ct_mark[0]
        d[macros.FILTER_CT_MARK_MASK] = "%dU" % cfg.ct_mark[1]
    if cfg.ct_zone is not None:
        d[macros.FILTER_CT_ZONE] = cfg.ct_zone
    inodes = cfg.netns_all or ([cfg.netns] if cfg.netns is not None else [])
    if inodes:        # -N, repeatable: a fixed set of numbers (config.MAX_NETNS at most)
        matches = " || ".join("(n) == %dU" % int(i) for i in inodes)
        d["%s(n)" % macros.FILTER_NETNS] = "(%s)" % matches
    if cfg.expression is not None:
        d[macros.PCAP_FILTER] = 1
        d.update(cfg.expression.defines())
    return d


def mode_defines(cfg):
    d = {}
    if "iptable" in cfg.modes:
        d[macros.MODE_IPTABLE] = 1
    if "drop" in cfg.modes:
        d[macros.MODE_DROP] = 1
    if "why" in cfg.modes:
        d[macros.MODE_WHY] = 1
    if cfg.keep:
        d[macros.KEEP] = 1
        d[macros.KEEP_ENTRIES] = KEEP_ENTRIES
    if cfg.stacks:
        d[macros.STACK_ALL if cfg.stacks == "all" else macros.STACK_DROPS] = 1
        d[macros.STACK_ENTRIES] = STACK_ENTRIES
    if cfg.write:
        d[macros.CAPTURE_BYTES] = capture_bytes(cfg.snaplen)
    return d


def choose_backend(requested):
    """(backend, notice) for --backend auto|kprobe|tracepoint."""
    have_kprobes = kernel.kprobes_available()
    if requested == "kprobe" and not have_kprobes:
        raise kernel.KernelError("--backend kprobe: kprobes are unavailable on this kernel "
                                 "(no CONFIG_KPROBES); use --backend tracepoint")
    if requested == "auto":
        if have_kprobes:
            return "kprobe", None
        return "tracepoint", ("skbtracer: kprobes are unavailable on this kernel; "
                              "using tracepoints (fewer probe points, see -v)")
    return requested, None


def choose_tracepoints(plan, layouts, refused=None):
    """How the plan's tracepoints are attached: (tp_btf.TP_BTF, '') where
    this kernel runs BTF-typed raw tracepoints for all of them (their
    programs then read the skb by plain loads), else (tp_btf.RAW, why not).
    refused: why tp_btf programs failed once already."""
    events = [target for p in plan.probes for kind, target, _fn in p.attach if kind == tp_btf.RAW]
    if not events:
        return tp_btf.RAW, ""
    if refused:
        return tp_btf.RAW, refused
    if os.environ.get(tp_btf.FORCE_RAW_ENV) == "0":
        return tp_btf.RAW, "%s=0 in the environment" % tp_btf.FORCE_RAW_ENV
    if layouts.source != "btf":
        return tp_btf.RAW, "the struct layouts are not from BTF"
    ok, why = tp_btf.usable(events)
    if not ok:
        return tp_btf.RAW, why
    for probe in plan.probes:
        probe.attach = [(tp_btf.TP_BTF if kind == tp_btf.RAW else kind, target, fn)
                        for kind, target, fn in probe.attach]
    return tp_btf.TP_BTF, ""


class Program:
    """The complete C text and the probes it instantiates."""

    def __init__(self, cfg, backend=None, tp_btf_refused=None):
        """backend: force one without checking the kernel can attach it
        (the compile and verifier tests load kprobe programs on kernels
        that cannot attach them). tp_btf_refused: why the tracepoints must
        be raw tracepoints (their tp_btf programs were refused)."""
        self.cfg = cfg
        if backend:
            self.backend, self.notice = backend, None
        else:
            self.backend, self.notice = choose_backend(cfg.backend)
        self.layouts = layout.choose(cfg.layout)
        if cfg.ct_states and not self.layouts.ct_entry:
            raise kernel.KernelError("--ct-state: %s" % "; ".join(self.layouts.ct_notes))
        # a mark or zone filter the kernel cannot read would match nothing, silently
        for flag, given, what in (("--ct-mark", cfg.ct_mark is not None, "mark"),
                                  ("--ct-zone", cfg.ct_zone is not None, "zone")):
            problem = self.layouts.ct_unreadable.get(what) if given else None
            if problem:
                raise kernel.KernelError("%s: the conntrack %s cannot be read on this kernel: %s"
                                         % (flag, what, problem))
        self.plan = probes.plan_probes(cfg, self.backend, self.layouts)
        self.tracepoints, self.tracepoints_why = choose_tracepoints(self.plan, self.layouts,
                                                                    tp_btf_refused)
        if cfg.expression is not None:
            self.plan.notes.extend(self.layouts.pcap() + cfg.expression.notes())
        conn_match = cfg.matches_connection and self.layouts.conn_match()
        if conn_match:
            self.plan.notes.append("-H/-P/--proto: the packet's headers, else its connection's "
                                   "original tuple (--header-only: the headers only)")
        elif cfg.matches_connection:
            self.plan.notes.append("-H/-P/--proto: the packets' own headers only (%s)"
                                   % "; ".join(self.layouts.ct_notes or ["no conntrack"]))
        defines = {}
        if conn_match:
            defines[macros.CT_MATCH] = 1
        defines.update(self.layouts.defines)
        defines.update(tunnel.defines())
        defines.update(mode_defines(cfg))
        defines.update(filter_defines(cfg))
        defines.update(self.plan.defines)
        if cfg.on_trouble:
            defines.update(recorder.defines(cfg, self.plan.probes))
            self.plan.notes.append(
                "--on-trouble: the last %d rows of up to %d skbs kept, %.1f MiB of kernel memory"
                % (recorder.SIGHTINGS, cfg.recorder_size,
                   recorder.memory_bytes(cfg.recorder_size) / 2**20))
        if self.tracepoints == tp_btf.TP_BTF:
            defines[macros.TP_BTF] = 1
        # events through the BPF ring buffer where the kernel has one (5.8+)
        ring = reader.ring_buffer_available()
        try:
            pages = reader.buffer_pages(reader.RING_BUFFER_PAGES if ring else reader.PERF_PAGES)
        except reader.ReaderError as e:
            raise kernel.KernelError(str(e)) from None
        self.ring_buffer_pages = pages if ring else None   # else the perf buffer's, per CPU
        self.perf_pages = None if ring else pages
        if self.ring_buffer_pages:
            defines[macros.RING_BUFFER_PAGES] = self.ring_buffer_pages
        with open(c_source_path()) as f:
            body = f.read()
        head = ["/* generated by skbtracer.py: layouts from %s, %s backend */"
                % (self.layouts.description, self.backend)]
        head += ["#define %s %s" % (name, value) for name, value in sorted(defines.items())]
        tail = list(dict.fromkeys(p.c_line for p in self.plan.probes if p.c_line))
        self._parts = ("\n".join(head) + "\n\n", body, "\n" + "\n".join(tail) + "\n")
        self.text = self._assemble(listing=False)

    def with_raw_tracepoints(self, why):
        """The same program with its tracepoints as raw tracepoints, for
        when the kernel refused their tp_btf programs (why)."""
        again = Program(self.cfg, self.backend, tp_btf_refused=why)
        again.notice = self.notice
        return again

    def _assemble(self, listing):
        head, body, tail = self._parts
        expression = self.cfg.expression
        if expression is not None:
            functions = expression.c_functions()
            if listing:
                functions = expression.c_comment() + functions
            body = body.replace(macros.PCAP_FUNCTIONS_MARKER, functions)
        return head + body + tail

    def listing(self):
        """--ebpf: the program as compiled, with the filter expression as a
        comment above its translation (the compiled text has no trace of it)."""
        return self._assemble(listing=True)

    @property
    def capture_bytes(self):
        """-w: packet bytes the kernel copies per row at most."""
        return capture_bytes(self.cfg.snaplen)

    @property
    def probe_names(self):
        return [p.name for p in self.plan.probes]
