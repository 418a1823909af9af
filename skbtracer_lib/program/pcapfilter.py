"""tcpdump filter expressions (pcap-filter(7)), compiled by libpcap itself
into classic BPF and translated into C that skbtracer.c runs in the kernel.

The expression is compiled twice: for the skb's Ethernet view (link type
EN10MB, from the MAC header) and for its IP view (link type RAW, from the
network header), because a packet on its way up or down the stack may have
either. Only libpcap's instructions, as numbers, reach the C text: the
translation below never copies the expression itself into the program.

libpcap's programs only jump forward, so the C is a loop-free sequence of
labelled statements; loads read the packet through pcap_load() in
skbtracer.c, which returns 0 (the packet is rejected, as classic BPF does)
when the load lies beyond what the skb's linear part holds.
"""

import ctypes
import ctypes.util
from dataclasses import dataclass

from . import macros

# libpcap's link types (DLT_*) for the two views
DLT_EN10MB = 1
DLT_RAW = 12
VIEWS = (("l2", DLT_EN10MB, "Ethernet"), ("l3", DLT_RAW, "raw IP"))
SNAPLEN = 262144
NETMASK_UNKNOWN = 0xFFFFFFFF
# Linux socket-filter ancillary loads (SKF_AD_*): libpcap emits them for a
# live Linux capture, as tcpdump runs it. An offloaded VLAN tag is known
# from the skb (vlan_tci, vlan_proto): those loads are translated; others
# (the direction of inbound/outbound, ...) are not known at a probe point.
SKF_AD_OFF = 0xFFFFF000
ANCILLARY = {44: ("v->tag & 0xffff", "the VLAN TCI"),
             48: ("v->tag != 0", "is a VLAN tag offloaded"),
             60: ("v->tag >> 16", "the VLAN TPID")}
ANCILLARY_NAMES = {0: "the skb's protocol", 4: "the packet's direction (inbound/outbound)",
                   8: "the interface index", 32: "the receive queue", 40: "the CPU"}
MEMWORDS = 16
# bytes of the packet read at once (pcap_fill): at least an offloaded VLAN
# tag's 16 bytes, at most what a filter on headers needs
MIN_CHUNK, MAX_CHUNK = 32, 128

# classic BPF opcode fields (linux/filter.h, pcap/bpf.h)
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
SRC_X = 0x08
ALU_OPS = {0x00: "+", 0x10: "-", 0x20: "*", 0x30: "/", 0x40: "|", 0x50: "&",
           0x60: "<<", 0x70: ">>", 0x90: "%", 0xA0: "^"}
ALU_NEG = 0x80
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
JMP_TESTS = {JEQ: "A == %s", JGT: "A > %s", JGE: "A >= %s", JSET: "(A & %s) != 0"}
RET_A = 0x10
TAX, TXA = 0x00, 0x80
SIZES = {W: 4, H: 2, B: 1}


class FilterError(Exception):
    """An expression libpcap rejects, or one skbtracer cannot translate."""


class LibpcapMissing(Exception):
    """libpcap is not installed."""


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int
    jf: int
    k: int


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte),
                ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_lib = None


def libpcap():
    """The libpcap shared library (Debian: libpcap0.8), loaded once."""
    global _lib
    if _lib is not None:
        return _lib
    names = [ctypes.util.find_library("pcap"), "libpcap.so.0.8", "libpcap.so.1", "libpcap.so"]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise LibpcapMissing("filter expressions need libpcap: install libpcap0.8")
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_create.restype = ctypes.c_void_p
    lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.pcap_activate.argtypes = [ctypes.c_void_p]
    lib.pcap_datalink.argtypes = [ctypes.c_void_p]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.bpf_image.restype = ctypes.c_char_p
    lib.bpf_image.argtypes = [ctypes.POINTER(_BpfInsn), ctypes.c_int]
    lib.bpf_filter.restype = ctypes.c_uint
    lib.bpf_filter.argtypes = [ctypes.POINTER(_BpfInsn), ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint]
    _lib = lib
    return lib


def _live_ethernet_handle(lib):
    """A live capture handle on lo (link type Ethernet on Linux), which
    makes libpcap compile as tcpdump does on Linux: VLAN tests that ask the
    kernel for an offloaded tag. Needs CAP_NET_RAW; None without it."""
    error = ctypes.create_string_buffer(256)
    handle = lib.pcap_create(b"lo", error)
    if not handle:
        return None
    if lib.pcap_activate(handle) != 0 or lib.pcap_datalink(handle) != DLT_EN10MB:
        lib.pcap_close(handle)
        return None
    return handle


def compile_expression(expression, linktype, live=False):
    """libpcap's instructions for expression on linktype, or FilterError
    carrying libpcap's own message. live: compile for a live Linux capture
    where one can be opened; (insns, compiled live?)"""
    lib = libpcap()
    handle = _live_ethernet_handle(lib) if live and linktype == DLT_EN10MB else None
    compiled_live = handle is not None
    handle = handle or lib.pcap_open_dead(linktype, SNAPLEN)
    if not handle:
        raise FilterError("libpcap cannot open a handle for link type %d" % linktype)
    program = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, NETMASK_UNKNOWN):
            raise FilterError(lib.pcap_geterr(handle).decode("utf-8", "replace"))
        insns = [Insn(i.code, i.jt, i.jf, i.k) for i in program.bf_insns[:program.bf_len]]
        lib.pcap_freecode(ctypes.byref(program))
        return insns, compiled_live
    finally:
        lib.pcap_close(handle)


def _c_insns(insns):
    array = (_BpfInsn * len(insns))()
    for i, insn in enumerate(insns):
        array[i] = _BpfInsn(insn.code, insn.jt, insn.jf, insn.k)
    return array


def image(insn, pc):
    """libpcap's own disassembly of one instruction (tcpdump -d)."""
    return libpcap().bpf_image(_c_insns([insn]), pc).decode()


def libpcap_verdict(insns, packet, wirelen=None):
    """What libpcap's interpreter says of packet (bpf_filter): the judge of
    the translation in the tests."""
    wirelen = len(packet) if wirelen is None else wirelen
    return libpcap().bpf_filter(_c_insns(insns), packet, wirelen, len(packet)) != 0


def check_translatable(insns):
    """Refuse, naming it, what the kernel translation cannot do."""
    if not insns:
        raise FilterError("libpcap produced an empty program")
    for pc, insn in enumerate(insns):
        cls, mode = insn.code & 0x07, insn.code & 0xE0
        if cls in (LD, LDX) and mode in (ABS, IND) and insn.k >= SKF_AD_OFF:
            field = insn.k - SKF_AD_OFF
            if cls != LD or mode != ABS or field not in ANCILLARY:
                what = ANCILLARY_NAMES.get(field, "Linux ancillary data %d" % field)
                raise FilterError("instruction %d (%s): %s is not known at a probe point"
                                  % (pc, image(insn, pc), what))
        if cls == JMP:
            op = insn.code & 0xF0
            if op not in (JA, *JMP_TESTS):
                raise FilterError("instruction %d (%s): not supported" % (pc, image(insn, pc)))
            if op == JA and (pc + 1 + insn.k) & 0xFFFFFFFF <= pc:
                raise FilterError("instruction %d (%s): a backward jump (a loop, as protochain "
                                  "makes) cannot run in the kernel program" % (pc, image(insn, pc)))
            targets = [pc + 1 + insn.k] if op == JA else [pc + 1 + insn.jt, pc + 1 + insn.jf]
            if any(t >= len(insns) for t in targets):
                raise FilterError("instruction %d (%s): a jump out of the program"
                                  % (pc, image(insn, pc)))
        elif cls == MISC and insn.code & 0xF8 not in (TAX, TXA):
            raise FilterError("instruction %d (%s): not supported" % (pc, image(insn, pc)))
        elif cls in (LD, LDX) and mode not in (IMM, ABS, IND, MEM, LEN, MSH):
            raise FilterError("instruction %d (%s): not supported" % (pc, image(insn, pc)))
        elif cls == ALU and insn.code & 0xF0 not in (*ALU_OPS, ALU_NEG):
            raise FilterError("instruction %d (%s): not supported" % (pc, image(insn, pc)))
        elif cls in (ST, STX, LD, LDX) and mode == MEM and insn.k >= MEMWORDS:
            raise FilterError("instruction %d (%s): scratch word out of range"
                              % (pc, image(insn, pc)))
    if insns[-1].code & 0x07 not in (RET, JMP):
        raise FilterError("the program does not end in a return")


def _statement(insn, pc):
    """One instruction as C. A = accumulator, X = index, M = scratch words;
    v is the packet view; every load can reject (return 0)."""
    cls, size, mode = insn.code & 0x07, insn.code & 0x18, insn.code & 0xE0
    k = "0x%xU" % insn.k
    if cls in (LD, LDX):
        reg = "A" if cls == LD else "X"
        if cls == LDX and mode == MSH:
            return "if (!pcap_load(v, %s, 1, &X)) return 0; X = (X & 0xf) << 2;" % k
        if mode == IMM:
            return "%s = %s;" % (reg, k)
        if mode == MEM:
            return "%s = M[%d];" % (reg, insn.k)
        if mode == LEN:
            return "%s = v->wirelen;" % reg
        if mode == ABS and insn.k >= SKF_AD_OFF:      # an offloaded VLAN tag's fields
            return "A = %s;" % ANCILLARY[insn.k - SKF_AD_OFF][0]
        offset = k if mode == ABS else "X + %s" % k
        return "if (!pcap_load(v, %s, %d, &%s)) return 0;" % (offset, SIZES[size], reg)
    if cls == ST:
        return "M[%d] = A;" % insn.k
    if cls == STX:
        return "M[%d] = X;" % insn.k
    if cls == ALU:
        op = insn.code & 0xF0
        if op == ALU_NEG:
            return "A = -A;"
        operand = "X" if insn.code & SRC_X else k
        if op in (0x30, 0x90):      # division by 0 rejects, as in classic BPF
            if not insn.code & SRC_X:
                return "A %s= %s;" % (ALU_OPS[op], k) if insn.k else "return 0;"
            return "if (X == 0) return 0; A %s= X;" % ALU_OPS[op]
        if op in (0x60, 0x70):      # shifts of 32 or more give 0 in classic BPF
            return "A = %s < 32 ? A %s %s : 0;" % (operand, ALU_OPS[op], operand)
        return "A %s= %s;" % (ALU_OPS[op], operand)
    if cls == JMP:
        op = insn.code & 0xF0
        if op == JA:
            return "goto L%d;" % (pc + 1 + insn.k)
        operand = "X" if insn.code & SRC_X else k
        test = JMP_TESTS[op] % operand
        return "if (%s) goto L%d; else goto L%d;" % (test, pc + 1 + insn.jt, pc + 1 + insn.jf)
    if cls == RET:
        return "return A != 0;" if insn.code & 0x18 == RET_A else "return %d;" % (insn.k != 0)
    return "X = A;" if insn.code & 0xF8 == TAX else "A = X;"


def translate(insns, function):
    """C for `static __always_inline int function(struct pcap_view *v)`:
    1 when the packet matches. libpcap's disassembly is each statement's
    comment."""
    check_translatable(insns)
    uses_mem = any(i.code & 0x07 in (ST, STX) or
                   (i.code & 0x07 in (LD, LDX) and i.code & 0xE0 == MEM) for i in insns)
    targets = _jump_targets(insns)
    lines = ["static __always_inline int %s(struct pcap_view *v)" % function, "{",
             "    u32 A = 0, X = 0;" if any(map(_uses_x, insns)) else "    u32 A = 0;"]
    if uses_mem:
        lines.append("    u32 M[%d] = {};" % MEMWORDS)
    for pc, insn in enumerate(insns):
        label = "L%d:" % pc if pc in targets else ""
        lines.append("%-6s%-60s /* %s */" % (label, _statement(insn, pc), " ".join(image(insn, pc).split())))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _uses_x(insn):
    cls = insn.code & 0x07
    return (cls in (LDX, STX) or (cls == LD and insn.code & 0xE0 == IND) or cls == MISC or
            (cls in (ALU, JMP) and insn.code & SRC_X and insn.code & 0xF0 not in (ALU_NEG, JA)))


def _jump_targets(insns):
    targets = set()
    for pc, insn in enumerate(insns):
        if insn.code & 0x07 == JMP:
            if insn.code & 0xF0 == JA:
                targets.add(pc + 1 + insn.k)
            else:
                targets.update((pc + 1 + insn.jt, pc + 1 + insn.jf))
    return targets


@dataclass
class View:
    """The expression compiled for one view of the skb."""
    name: str              # "l2" or "l3"
    description: str       # "Ethernet" or "raw IP"
    insns: list = None     # None: the expression cannot apply in this view
    error: str = None      # libpcap's reason when insns is None


class Expression:
    """A pcap-filter expression, compiled for both views."""

    def __init__(self, text, live=True):
        """live: compile the Ethernet view as tcpdump does on Linux (needs
        CAP_NET_RAW; without it, or with live=False, an offloaded VLAN tag is
        put back into the frame instead, as tcpdump shows it in a file)."""
        self.text = text
        self.views = []
        self.live = False
        for name, linktype, description in VIEWS:
            try:
                insns, compiled_live = compile_expression(text, linktype, live)
                self.live |= compiled_live
                check_translatable(insns)
                self.views.append(View(name, description, insns))
            except FilterError as e:
                self.views.append(View(name, description, error=str(e)))
        usable = [v for v in self.views if v.insns is not None]
        if not usable:
            # libpcap's message for the Ethernet view: the one tcpdump gives
            raise FilterError(self.views[0].error)

    def c_functions(self):
        """pcap_match_l2/pcap_match_l3; a view the expression cannot apply
        to rejects every packet."""
        parts = []
        for view in self.views:
            function = macros.pcap_match(view.name)
            if view.insns is None:
                # libpcap's reason stays out of the C text (it may quote the expression)
                parts.append("static __always_inline int %s(struct pcap_view *v) "
                             "{ return 0; }  /* not for this view (-v says why) */\n" % function)
            else:
                parts.append(translate(view.insns, function))
        return "\n".join(parts)

    def defines(self):
        """PCAP_CHUNK: the bytes one read brings in, enough for every load at
        a fixed offset (a power of two, for the verifier's masks; loads past
        it read the skb directly); PCAP_NEEDS_LEN when BPF_LEN is used."""
        insns = [i for v in self.views if v.insns for i in v.insns]
        loads = [i for i in insns if i.code & 0x07 in (LD, LDX)]
        if any(i.code & 0xE0 == IND for i in loads):
            chunk = MAX_CHUNK
        else:
            ends = [i.k + SIZES[i.code & 0x18] for i in loads
                    if i.code & 0xE0 == ABS and i.k < SKF_AD_OFF]
            ends += [i.k + 1 for i in loads if i.code & 0xE0 == MSH]
            chunk = MIN_CHUNK
            while chunk < min(max(ends, default=0), MAX_CHUNK):
                chunk *= 2
        d = {macros.PCAP_CHUNK: chunk}
        if not self.live:
            d[macros.PCAP_INSERT_TAG] = 1
        if any(i.code & 0xE0 == LEN for i in loads):
            d[macros.PCAP_NEEDS_LEN] = 1
        return d

    def c_comment(self):
        """The expression as a C comment, for --ebpf's listing only."""
        text = "".join(c if " " <= c <= "~" else "?" for c in self.text).replace("*/", "* /")
        return "/* filter expression: %s */\n" % text

    def notes(self):
        """-v: views where the expression can never match."""
        notes = ["the filter expression is compiled as tcpdump compiles it on Linux (vlan "
                 "tests an offloaded tag)" if self.live else
                 "the filter expression is compiled as for a capture file (no live libpcap "
                 "handle): an offloaded VLAN tag is put back into the frame"]
        return notes + ["the filter expression cannot apply to packets seen from their %s header "
                        "(%s); they never match there"
                        % ("Ethernet" if v.name == "l2" else "IP", v.error)
                        for v in self.views if v.insns is None]

