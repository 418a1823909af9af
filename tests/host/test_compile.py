"""The generated BPF program compiles with bcc and every program of every
probe passes the verifier, for both backends and a representative set of
flag combinations; and struct event_t as compiled matches the field table
(events/fields.py).

kprobe programs are only loaded (verifier), never attached, so this runs on
kernels without kprobes too. Run as root with Debian's interpreter:
    /usr/bin/python3 -m pytest tests/host/test_compile.py
"""

import ctypes
import os
import re
import socket
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from skbtracer_lib import config
from skbtracer_lib.events import decode, fields
from skbtracer_lib.program import kernel, layout, macros, recorder, tp_btf  # noqa: E402
from skbtracer_lib.program.source import Program  # noqa: E402

bcc = pytest.importorskip("bcc", reason="bcc is not importable: run with /usr/bin/python3 "
                                        "(Debian's python3-bpfcc)")
BPF = bcc.BPF

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF programs needs root"),
    # bcc 0.26 warns about every str argument ("not a bytes object")
    pytest.mark.filterwarnings("ignore:not a bytes object:DeprecationWarning"),
]

PID = str(os.getpid())
CAPTURE_PATH = "/tmp/skbt-compile-%d.pcapng" % os.getpid()     # -w: checked, never opened

# (id, flags): every mode alone and combined, with the options that change
# the C text (keep, stacks, v4/v6 address, icmp id, port, netns, pid).
CONFIGS = [
    ("route-default", []),
    ("iptable", ["--iptable"]),
    ("drop", ["--drop"]),
    ("dropstack", ["--dropstack"]),
    ("route+keep", ["--route", "--keep"]),
    ("route+callstack", ["--route", "--callstack"]),
    ("all-modes", ["--route", "--iptable", "--drop"]),
    ("iptable+drop+keep+dropstack+v4+udp-port",
     ["--iptable", "--drop", "--keep", "--dropstack", "-H", "10.0.0.1", "--proto", "udp",
      "-P", "53"]),
    ("route+drop+v6+icmpid", ["--route", "--drop", "-H", "fd00::1", "--proto", "icmp",
                              "--icmpid", "7"]),
    ("route+iptable+netns+pid+keep+callstack",
     ["--route", "--iptable", "-N", "/proc/self/ns/net", "-p", PID, "--keep", "--callstack"]),
    ("all-modes+keep+tcp-port+v4+pid",
     ["--route", "--iptable", "--drop", "--keep", "-H", "10.0.0.1", "--proto", "tcp",
      "-P", "443", "-p", PID]),
    # filter expressions: the longest libpcap programs the tests use, in every mode
    ("all-modes+expression",
     ["--route", "--iptable", "--drop", "(udp and port 53) or (tcp[tcpflags] & tcp-syn != 0) "
      "or (vlan 100 and icmp6) or len < 64"]),
    ("all-modes+keep+stacks+expression",
     ["--route", "--iptable", "--drop", "--keep", "--callstack", "-H", "10.0.0.1",
      "ether src 02:00:00:00:00:01 and ip[8] > 1"]),
    ("all-modes+capture", ["--route", "--iptable", "--drop", "-w", CAPTURE_PATH]),
    # conntrack: --ct-state compiles a filter in; the ct fields are read in every mode
    ("route+ct+ct-state", ["--route", "--ct", "--ct-state", "new", "--ct-state", "est,inv"]),
    ("all-modes+keep+stacks+capture+expression+ct-state",
     ["--route", "--iptable", "--drop", "--keep", "--callstack", "-w", CAPTURE_PATH,
      "--ct-state", "untracked,rel", "-H", "10.0.0.1", "udp and port 53"]),
    # --ct-mark/--ct-zone: compared after read_ct, alone and with every other filter
    ("route+ct-mark+ct-zone", ["--route", "--ct-mark", "0x2a/0xff", "--ct-zone", "7"]),
    ("all-modes+keep+stacks+capture+expression+ct-filters",
     ["--route", "--iptable", "--drop", "--keep", "--callstack", "-w", CAPTURE_PATH,
      "--ct-state", "new,est", "--ct-mark", "0xffffffff", "--ct-zone", "0xffff", "-H", "fd00::1",
      "-p", PID, "-N", "/proc/self/ns/net", "udp and port 53"]),
    # issue 28: -H/-P/--proto match the connection's original tuple (CT_MATCH, _nfct in the
    # span): in prepare (-H), in filter_packet (--proto, -P alone), with --keep, v6, -w
    ("route+drop+udp-port-by-connection", ["--route", "--drop", "--proto", "udp", "-P", "53"]),
    ("all-modes+keep+v6+icmp-by-connection",
     ["--route", "--iptable", "--drop", "--keep", "-H", "fd00::1", "--proto", "icmp"]),
    ("route+v4+port+capture+expression-by-connection",
     ["--route", "-H", "10.0.0.1", "-P", "53", "-w", CAPTURE_PATH, "udp"]),
    ("route+v4+header-only", ["--route", "-H", "10.0.0.1", "--header-only"]),
    # --why: the ICMP error / TCP reset rows (tracepoints here; kprobes: test_why_kprobes_...)
    ("why", ["--why"]),
    ("all-modes+why+keep+v4+udp-port",
     ["--route", "--iptable", "--drop", "--why", "--keep", "-H", "10.0.0.1", "--proto", "udp",
      "-P", "53"]),
    # --on-trouble: the flight recorder in submit(), with --slow and every filter it keeps
    ("on-trouble", ["--on-trouble"]),
    ("on-trouble+slow+dropstack+v4+udp-port+expression",
     ["--on-trouble", "--slow", "100ms", "--dropstack", "-H", "10.0.0.1", "--proto", "udp",
      "-P", "53", "--recorder-size", "16", "udp and port 53"]),
    ("route+keep+capture-max-snaplen", ["--route", "--keep", "-H", "10.0.0.1", "-w", CAPTURE_PATH,
                                        "--snaplen", "65535"]),
]
BACKENDS = ["kprobe", "tracepoint"]


@pytest.fixture(scope="module")
def header_tree():
    """BCC_KERNEL_SOURCE for the whole module, as skbtracer sets it."""
    try:
        tree = kernel.find_header_tree()
    except kernel.KernelError as e:
        pytest.skip(str(e))
    old = os.environ.get("BCC_KERNEL_SOURCE")
    if tree.kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = tree.kernel_source
    try:
        yield tree
    finally:
        if old is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = old
        tree.close()


# --- struct event_t as bcc compiled it vs the field table (events/fields.py) ---

def event_struct(bpf):
    """The ctypes struct bcc generated from struct event_t (the first member,
    e, of the per-CPU 'scratch' array's struct scratch_slot; Leaf is then an
    array of it, one per CPU)."""
    table = bpf["scratch"]
    leaf = getattr(table, "sLeaf", None) or table.Leaf
    if not hasattr(leaf, "_fields_"):
        leaf = leaf._type_
    assert table.Leaf is leaf or getattr(table.Leaf, "_type_", None) is leaf
    assert leaf._fields_[0][0] == "e" and leaf.e.offset == 0
    return leaf._fields_[0][1]


_CTYPES = {"u64": ctypes.c_uint64, "u32": ctypes.c_uint32, "s32": ctypes.c_int32,
           "u16": ctypes.c_uint16, "u8": ctypes.c_uint8, "char": ctypes.c_char}


def check_event_layout(bpf):
    """bcc's struct event_t, member for member, is fields.FIELDS: names,
    offsets, sizes and signedness as clang laid it out; decode.EVENT the same."""
    leaf = event_struct(bpf)
    assert ctypes.sizeof(leaf) == fields.EVENT_SIZE == decode.EVENT.size
    members = [(name, ctype) for name, ctype in leaf._fields_
               if not name.startswith("__pad")]         # bcc's names for C's padding
    assert [name for name, _ctype in members] == [f.name for f in fields.FIELDS]
    for (name, ctype), f in zip(members, fields.FIELDS):
        described = getattr(leaf, name)
        assert (described.offset, described.size) == (f.offset, f.size), name
        element = getattr(ctype, "_type_", ctype) if f.count > 1 else ctype
        assert ctypes.sizeof(element) == ctypes.sizeof(_CTYPES[f.ctype]), name
        if f.ctype != "char" and not issubclass(element, ctypes.Array):
            signed = element(-1).value < 0
            assert signed == (f.ctype == "s32"), name


# --- the matrix ------------------------------------------------------------------

def load_all(bpf, program):
    """Load (verify) every program of every probe; [(fn, fd)]."""
    loaded = []
    for probe in program.plan.probes:
        for attach_type, target, fn_name in probe.attach:
            if attach_type == tp_btf.TP_BTF:
                fd = tp_btf.load(bpf, fn_name, target)
                os.close(fd)        # bcc does not hold it
            else:
                prog_type = BPF.RAW_TRACEPOINT if attach_type == tp_btf.RAW else BPF.KPROBE
                fd = bpf.load_func(fn_name, prog_type).fd
            assert fd >= 0, fn_name
            loaded.append((fn_name, fd))
    return loaded


def check_recorder_layout(bpf):
    """--on-trouble: struct flight as compiled is what recorder.memory_bytes counts."""
    flight = bpf[macros.MAP_FLIGHTS].Leaf
    assert ctypes.sizeof(flight) == recorder.FLIGHT_HEAD_BYTES + recorder.SIGHTINGS * \
        recorder.SIGHTING_BYTES
    assert flight.s.offset == recorder.FLIGHT_HEAD_BYTES


def compile_and_load(program):
    bpf = BPF(text=program.text)
    try:
        loaded = load_all(bpf, program)
        check_event_layout(bpf)
        if program.cfg.on_trouble:
            check_recorder_layout(bpf)
        return loaded
    finally:
        bpf.cleanup()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flags", [f for _i, f in CONFIGS], ids=[i for i, _f in CONFIGS])
def test_compiles_and_verifies(header_tree, flags, backend):
    cfg = config.parse_args(flags)
    program = Program(cfg, backend=backend)
    assert program.backend == backend
    loaded = compile_and_load(program)

    expected = sum(len(p.attach) for p in program.plan.probes)
    assert len(loaded) == expected
    kinds = {p.kind for p in program.plan.probes}
    if "route" in cfg.modes:
        assert "route" in kinds
    if "drop" in cfg.modes:
        assert "drop" in kinds
    if "why" in cfg.modes:
        assert "why" in kinds
    if "iptable" in cfg.modes:
        if backend == "kprobe":     # nf_tables is built into the host's kernel: nft_do_chain
            assert "iptable" in kinds, program.plan.skipped
        else:
            assert "iptable" in [missing.mode for missing in program.plan.unavailable]
    if cfg.modes == {"iptable"} and backend == "tracepoint":
        assert loaded == []          # nothing to attach: skbtracer says so and exits
    else:
        assert loaded


def test_header_layout_compiles(header_tree):
    """--layout headers: struct offsets from the installed kernel headers."""
    cfg = config.parse_args(["--layout", "headers", "--route", "--iptable", "--drop", "--keep",
                             "--callstack", "-H", "10.0.0.1"])
    program = Program(cfg, backend="kprobe")
    assert program.layouts.source == "headers"
    assert re.search(r"^#define SKBT_LAYOUT_HEADERS 1$", program.text, re.M)
    assert not re.search(r"^#define L_SKB_LEN_OFF", program.text, re.M)
    assert compile_and_load(program)


def test_header_layout_capture_compiles(header_tree):
    """-w reads skb->tail: from the installed headers too."""
    cfg = config.parse_args(["--layout", "headers", "--route", "--drop", "-w", CAPTURE_PATH])
    assert compile_and_load(Program(cfg, backend="tracepoint"))


def test_header_layout_conntrack_compiles(header_tree):
    """--layout headers (no BTF): struct nf_conn's layout from the installed headers
    (nf_conntrack.h where CONFIG_NF_CONNTRACK is set), with --ct-state; -P and --proto
    matching the connection's original tuple from those headers (CT_MATCH)."""
    cfg = config.parse_args(["--layout", "headers", "--route", "--drop", "--ct-state", "new,est",
                             "--proto", "udp", "-P", "53"])
    program = Program(cfg, backend="kprobe")
    assert not re.search(r"^#define HAVE_CT_", program.text, re.M)
    assert re.search(r"^#define CT_MATCH 1$", program.text, re.M)
    assert compile_and_load(program)


def test_header_layout_ct_mark_and_zone_compile(header_tree):
    """--layout headers: --ct-mark/--ct-zone read struct nf_conn's mark and zone.id where the
    headers' CONFIG_NF_CONNTRACK_MARK/_ZONES are set (else the C's #error says which is off)."""
    cfg = config.parse_args(["--layout", "headers", "--route", "--drop", "--ct-mark", "1/1",
                             "--ct-zone", "3"])
    assert compile_and_load(Program(cfg, backend="tracepoint"))


def test_without_the_nf_conn_layout_the_state_is_still_read(header_tree, monkeypatch):
    """5.10 has no module BTF: struct nf_conn cannot be had where conntrack is a module. The
    program then reads skb->_nfct alone (state and id; --ct-state works), and -v says why."""
    from skbtracer_lib.program import layout
    from skbtracer_lib.program.btf import BTFError
    real = kernel.btf()

    class NoConntrackModuleBTF:
        def __getattr__(self, name):
            return getattr(real, name)

        def member(self, struct_name, path, module=None):
            if struct_name.startswith("nf_conn"):
                raise BTFError("no struct %s in BTF" % struct_name)
            return real.member(struct_name, path, module)

    monkeypatch.setattr(layout.kernel, "btf", NoConntrackModuleBTF)
    cfg = config.parse_args(["--route", "--iptable", "--drop", "--keep", "--ct-state", "new",
                             "-H", "10.0.0.1"])
    program = Program(cfg, backend="kprobe")
    assert "#define HAVE_CT_NFCT 1" in program.text
    assert "#define HAVE_CT_CONN" not in program.text
    assert "#define L_CT_STATUS_OFF" not in program.text
    assert any("state only" in note for note in program.layouts.ct_notes)
    # -H cannot match the connection without its tuple: the headers decide, and -v says so
    assert not re.search(r"^#define CT_MATCH 1$", program.text, re.M)
    assert any(note.startswith("-H/-P/--proto: the packets' own headers only")
               for note in program.plan.notes), program.plan.notes
    assert compile_and_load(program)


def test_event_bytes_from_the_compiled_struct_decode(header_tree):
    """Fill bcc's struct event_t field by field as the BPF code does (network
    order for packet fields) and decode the bytes with decode.Event."""
    program = Program(config.parse_args(["--drop"]), backend="tracepoint")
    bpf = BPF(text=program.text)
    try:
        leaf = event_struct(bpf)
    finally:
        bpf.cleanup()
    e = leaf()
    e.ts_ns, e.skb, e.location = 111_222_333, 0xFFFF888012345678, 0xFFFFFFFF81000010
    e.netns, e.ifindex, e.pid, e.drop_reason = 4026531840, 7, 4321, 77
    e.verdict, e.stack_id = (113 << 16) | 1, -14
    e.tcp_seq = struct.unpack("<I", struct.pack(">I", 0xA1B2C3D4))[0]
    e.len, e.probe = 1514, 3
    e.ip_id, e.sport, e.dport, e.icmp_id = (socket.htons(v) for v in (0xBEEF, 443, 51000, 9))
    (e.kind, e.pkt_type, e.family, e.l4proto, e.tcp_flags, e.icmp_type, e.ttl, e.pf,
     e.hook) = (decode.KIND_DROP, 3, 4, 6, 0x12, 0, 61, 2, 4)
    e.ifname = b"veth0"
    e.dmac[:] = list(bytes.fromhex("0242ac110002"))
    e.smac[:] = list(bytes.fromhex("0242ac110003"))
    e.saddr[:] = list(socket.inet_aton("10.1.2.3")) + [0] * 12
    e.daddr[:] = list(socket.inet_aton("10.4.5.6")) + [0] * 12
    e.table = b"filter"
    e.chain = b"INPUT"
    raw = bytes(e)
    assert len(raw) == decode.EVENT_SIZE

    d = decode.Event(raw)
    assert (d.ts_ns, d.skb, d.location) == (111_222_333, 0xFFFF888012345678, 0xFFFFFFFF81000010)
    assert (d.netns, d.ifindex, d.pid, d.drop_reason) == (4026531840, 7, 4321, 77)
    assert (d.verdict, d.stack_id) == (1, -14)
    assert d.tcp_seq == 0xA1B2C3D4
    assert (d.len, d.probe) == (1514, 3)
    assert (d.ip_id, d.sport, d.dport, d.icmp_id) == (0xBEEF, 443, 51000, 9)
    assert (d.kind, d.pkt_type, d.family, d.l4proto, d.tcp_flags, d.icmp_type, d.ttl, d.pf,
            d.hook) == (decode.KIND_DROP, 3, 4, 6, 0x12, 0, 61, 2, 4)
    assert d.ifname == "veth0"
    assert d.dmac == bytes.fromhex("0242ac110002") and d.smac == bytes.fromhex("0242ac110003")
    assert (d.saddr, d.daddr) == ("10.1.2.3", "10.4.5.6")
    assert (d.table, d.chain) == ("filter", "INPUT")


@pytest.mark.parametrize("flags", [["--all"], ["--func", "br_*", "--drop", "--keep"],
                                   ["--all", "--func", "ip_*", "--iptable", "--callstack"]])
@pytest.mark.parametrize("multi", [False, True])
def test_functions_compile_and_verify_as_kprobes_and_kprobe_multi(header_tree, flags, multi,
                                                                  monkeypatch):
    """--all/--func: the shared route programs pass the verifier as plain
    kprobes and, with bpf_get_func_ip (planned where the kernel has
    kprobe-multi links; this host has none, so planned here by hand), as
    kprobe-multi programs."""
    from skbtracer_lib.program import kprobe_multi
    from skbtracer_lib.program.kprobe_multi import BPF_TRACE_KPROBE_MULTI
    monkeypatch.setattr(kprobe_multi, "supported", lambda: multi)
    program = Program(config.parse_args(flags), backend="kprobe")
    assert program.plan.function_counts and program.plan.function_counts[1] > 10
    assert len(compile_and_load(program)) == sum(len(p.attach) for p in program.plan.probes)
    assert (macros.ROUTE_FUNC_IP in program.plan.defines) == multi
    if not multi:
        return
    bpf = BPF(text=program.text)
    try:
        shared = {p.attach[0][2] for p in program.plan.probes if p.by_address}
        for fn_name in shared:
            assert bpf.load_func(fn_name, BPF.KPROBE, attach_type=BPF_TRACE_KPROBE_MULTI).fd >= 0
    finally:
        bpf.cleanup()


# kernels without icmp:icmp_send (5.10), or whose tcp:tcp_send_reset has no
# reason and misses resets without a socket (5.10, 6.1): (tracepoint -> its
# argument count, or None), and the kprobes --why then plans; both have
# fib:fib_table_lookup(tb_id, flp, nhc, err), fib6:fib6_table_lookup(net,
# res, table, flp) and neigh:neigh_event_send_done(n, rc) for the routing
# decisions and neighbour waits, as tracepoints beside the kprobes
DECISIONS = {"fib_table_lookup": 4, "fib6_table_lookup": 4, "neigh_event_send_done": 2}
WHY_KERNELS = {
    "5.10": (dict(DECISIONS, icmp_send=None, tcp_send_reset=2),
             {"__icmp_send", "icmp6_send", "tcp_v4_send_reset", "tcp_v6_send_reset",
              "neigh_event_send_done"}),
    "6.1": (dict(DECISIONS, icmp_send=3, tcp_send_reset=2),
            {"icmp_send", "icmp6_send", "tcp_v4_send_reset", "tcp_v6_send_reset",
             "neigh_event_send_done"}),
}


@pytest.mark.parametrize("kernel_like", list(WHY_KERNELS))
def test_why_kprobes_compile_and_verify(header_tree, kernel_like, monkeypatch):
    """--why on the kprobe backend of a kernel older than this host's: the
    kprobes on __icmp_send, icmp6_send and tcp_v4/v6_send_reset, the ICMP
    senders' kretprobes that end ICMP's own route lookups, and the routing
    and neighbour tracepoints pass the verifier (this host has the
    functions, not the kprobes to attach them)."""
    from skbtracer_lib.program import probes
    params, wanted = WHY_KERNELS[kernel_like]
    monkeypatch.setattr(probes, "tracepoint_params", lambda _category, event: params[event])
    program = Program(config.parse_args(["--why", "--route", "--drop", "-H", "10.0.0.1"]),
                      backend="kprobe")
    planned = {p.name for p in program.plan.probes if p.kind == "why"}
    assert planned == wanted, program.plan.skipped
    helpers = {p.name for p in program.plan.probes if p.kind == "helper"}
    assert {"fib_table_lookup", "fib6_table_lookup"} <= helpers, program.plan.notes
    returns = {target for p in program.plan.probes for kind, target, fn in p.attach
               if fn == macros.ON_ICMP_SENT}
    assert returns == wanted & {"__icmp_send", "icmp6_send"}
    assert len(compile_and_load(program)) == sum(len(p.attach) for p in program.plan.probes)


# --- tracepoints as tp_btf, or raw ---------------------------------------------------

TP_BTF_FLAGS = ["--route", "--drop", "--why", "--keep", "-H", "10.0.0.1",
                "ether src 02:00:00:00:00:01 and vlan 100 and ip[8] > 1"]


def test_tracepoints_are_tp_btf_reading_the_skb_by_plain_loads(header_tree):
    """Where the kernel runs tp_btf (this host: 6.18 with BTF), the
    tracepoint programs are tp_btf and find_packet loads skb->protocol
    itself (no bpf_probe_read_kernel of the sk_buff span)."""
    if not tp_btf.check()[0]:
        pytest.fail("this host's kernel should run tp_btf: %s" % tp_btf.check()[1])
    program = Program(config.parse_args(TP_BTF_FLAGS), backend="tracepoint")
    assert program.tracepoints == tp_btf.TP_BTF, program.tracepoints_why
    assert "#define %s 1" % macros.TP_BTF in program.text
    kinds = {kind for p in program.plan.probes for kind, _t, _f in p.attach}
    assert kinds == {tp_btf.TP_BTF}
    defines = layout.Layouts("btf").defines
    bpf = BPF(text=program.text)
    try:
        text = bpf.disassemble_func(program.plan.probes[0].attach[0][2])
        assert re.search(r"= \*\(u16\*\)\(r\d+ \+%d\)" % defines["L_SKB_PROTOCOL_OFF"], text), text
        if "#define %s " % macros.CT_MATCH in program.text:
            # -H's connection match: skb->_nfct by a plain load too (in the span's
            # fields or not), never a helper call
            assert re.search(r"= \*\(u64\*\)\(r\d+ \+%d\)" % defines["L_SKB_NFCT_OFF"], text), text
        assert len(load_all(bpf, program)) == sum(len(p.attach) for p in program.plan.probes)
    finally:
        bpf.cleanup()


def test_raw_tracepoints_when_tp_btf_was_refused(header_tree):
    """The program Loaded falls back to: raw tracepoints, their find_packet
    reading the span, and it passes the verifier."""
    program = Program(config.parse_args(TP_BTF_FLAGS), backend="tracepoint")
    raw = program.with_raw_tracepoints("tp_btf kfree_skb: load: Permission denied")
    assert raw.tracepoints == tp_btf.RAW
    assert raw.tracepoints_why.startswith("tp_btf kfree_skb")
    assert "#define %s" % macros.TP_BTF not in raw.text
    assert {kind for p in raw.plan.probes for kind, _t, _f in p.attach} == {tp_btf.RAW}
    assert compile_and_load(raw)


def test_a_refused_tp_btf_program_is_loaded_again_as_raw_tracepoints(header_tree, monkeypatch):
    """The kernel refusing a tp_btf program (here: told it is for sched_switch,
    whose first argument is no pointer, so the verifier rejects the plain
    loads) makes Loaded compile the program again with raw tracepoints."""
    from skbtracer_lib.program.btf import TYPEDEF
    from skbtracer_lib.program.load import Loaded
    program = Program(config.parse_args(["--drop", "-H", "10.0.0.1"]), backend="tracepoint")
    assert program.tracepoints == tp_btf.TP_BTF, program.tracepoints_why
    wrong = kernel.btf().vmlinux.find("btf_trace_sched_switch", (TYPEDEF,))
    monkeypatch.setattr(tp_btf, "target_id", lambda event: wrong)
    loaded = Loaded(program, header_tree)
    try:
        assert loaded.program.tracepoints == tp_btf.RAW
        assert loaded.program.tracepoints_why.startswith("tp_btf kfree_skb: load: "), \
            loaded.program.tracepoints_why
        assert [(kind, target) for _p, kind, target in loaded.attached] == \
            [(tp_btf.RAW, "kfree_skb")]
        assert loaded.tp_btf_fds == {}
    finally:
        loaded.close()
