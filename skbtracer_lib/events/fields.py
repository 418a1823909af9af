"""struct event_t, the event skbtracer.c writes for every row, field by field:
the one description Python has of it. The rest is derived from FIELDS:
decode.py's structs and Event, encode(), the text row's cache keys
(textrow.py), the offsets the rows in C read (handed to _rows.Formatter when
it is made) and the JSON event object's keys for new fields (jsonl.py).
tests/unit/test_event_fields.py checks the table against the struct in
skbtracer.c: names, order, types, counts, offsets.

Adding a field: one line here and the C that fills it (the struct's line and
the code). Its value then shows in JSON under its name (json=None: not at
all); the text row shows what it always showed.
"""

import struct

# The C types a field may have: size (also its alignment) and struct code
C_TYPES = {"u64": (8, "Q"), "u32": (4, "I"), "s32": (4, "i"), "u16": (2, "H"), "u8": (1, "B"),
           "char": (1, "s")}

# How Python sees a field (decode.Event's attribute of the field's name)
NUMBER = "number"       # an int, in this host's byte order as the kernel wrote it
NETWORK = "network"     # an int the kernel copied in network byte order (packet bytes)
TEXT = "text"           # char[]: up to the first NUL, escaped for a column (decode.printable)
ADDRESS = "address"     # u8[16]: an IPv4 (its first 4 bytes) or IPv6 address as text, by family
BYTES = "bytes"         # u8[]: the bytes as they are (MAC addresses)
PAD = "pad"             # never read

# A field's "json": HAND: jsonl.JsonFormatter shows it its own way (its own
# key, a name for the number, inside "nf"/"drop", or null where it does not
# apply); a key: the value under that key, after "pid" (numbers as numbers,
# text and addresses as strings, bytes as hex); None: not shown.
HAND = "by hand"
_OWN_NAME = object()


class Field:
    """One member of struct event_t; offset and size are set by the layout."""

    __slots__ = ("name", "ctype", "count", "seen", "json", "mask", "offset", "size")

    def __init__(self, name, ctype, count=1, seen=NUMBER, json=_OWN_NAME, mask=None):
        self.name, self.ctype, self.count, self.seen = name, ctype, count, seen
        self.json = name if json is _OWN_NAME else json
        self.mask = mask            # Python keeps value & mask (verdict: its low byte)
        self.offset = self.size = None

    @property
    def align(self):
        return C_TYPES[self.ctype][0]

    @property
    def span(self):
        """Where the field is in the event's bytes, as a slice."""
        return slice(self.offset, self.offset + self.size)

    def code(self):
        """Its struct format code: one number, or the bytes of an array."""
        size, code = C_TYPES[self.ctype]
        return "%ds" % self.size if self.count > 1 or code == "s" else code

    def __repr__(self):
        return "Field(%r, %s%s, at %s)" % (
            self.name, self.ctype, "[%d]" % self.count if self.count > 1 else "", self.offset)


FIELDS = (
    #     name           C type  count  Python sees  JSON
    Field("ts_ns",       "u64",  1,     NUMBER,      HAND),     # bpf_ktime_get_ns()
    Field("skb",         "u64",  1,     NUMBER,      HAND),
    Field("location",    "u64",  1,     NUMBER,      HAND),     # drop rows: where it was freed
    Field("netns",       "u32",  1,     NUMBER,      HAND),
    Field("ifindex",     "u32",  1,     NUMBER,      HAND),
    Field("pid",         "u32",  1,     NUMBER,      HAND),
    Field("drop_reason", "u32",  1,     NUMBER,      HAND),
    # NF_DROP_ERR() keeps an errno in the upper bits: the verdict is the low byte
    Field("verdict",     "u32",  1,     NUMBER,      HAND, mask=0xFF),
    Field("stack_id",    "s32",  1,     NUMBER,      HAND),     # -1: none
    Field("tcp_seq",     "u32",  1,     NETWORK,     HAND),
    Field("len",         "u32",  1,     NUMBER,      HAND),
    Field("probe",       "u16",  1,     NUMBER,      HAND),     # index into the probe list
    Field("ip_id",       "u16",  1,     NETWORK,     HAND),
    Field("sport",       "u16",  1,     NETWORK,     HAND),
    Field("dport",       "u16",  1,     NETWORK,     HAND),
    Field("icmp_id",     "u16",  1,     NETWORK,     HAND),
    Field("kind",        "u8",   1,     NUMBER,      HAND),     # vocabulary.KINDS
    Field("pkt_type",    "u8",   1,     NUMBER,      HAND),
    Field("family",      "u8",   1,     NUMBER,      HAND),     # 4 or 6
    Field("l4proto",     "u8",   1,     NUMBER,      HAND),
    Field("tcp_flags",   "u8",   1,     NUMBER,      HAND),
    Field("icmp_type",   "u8",   1,     NUMBER,      HAND),
    Field("ttl",         "u8",   1,     NUMBER,      HAND),
    Field("pf",          "u8",   1,     NUMBER,      HAND),
    Field("hook",        "u8",   1,     NUMBER,      HAND),
    Field("ct_fault",    "u8",   1,     NUMBER,      HAND),     # drop rows: conntrack.FAULTS
    Field("ifname",      "char", 16,    TEXT,        HAND),
    Field("dmac",        "u8",   6,     BYTES,       HAND),
    Field("smac",        "u8",   6,     BYTES,       HAND),
    Field("saddr",       "u8",   16,    ADDRESS,     HAND),
    Field("daddr",       "u8",   16,    ADDRESS,     HAND),
    Field("table",       "char", 32,    TEXT,        HAND),
    Field("chain",       "char", 32,    TEXT,        HAND),
    # conntrack (skbtracer.c read_ct): JSON's "ct" object (events/conntrack.py)
    Field("ct",          "u64",  1,     NUMBER,      HAND),     # _nfct: nf_conn | ctinfo
    Field("ct_status",   "u32",  1,     NUMBER,      HAND),
    Field("ct_mark",     "u32",  1,     NUMBER,      HAND),
    Field("ct_zone",     "u16",  1,     NUMBER,      HAND),
    Field("ct_orig_sport", "u16", 1,    NETWORK,     HAND),
    Field("ct_orig_dport", "u16", 1,    NETWORK,     HAND),
    Field("ct_reply_sport", "u16", 1,   NETWORK,     HAND),
    Field("ct_reply_dport", "u16", 1,   NETWORK,     HAND),
    Field("ct_l4proto",  "u8",   1,     NUMBER,      HAND),
    Field("ct_known",    "u8",   1,     NUMBER,      HAND),     # conntrack.KNOWN_*
    Field("ct_orig_saddr", "u8", 16,    ADDRESS,     HAND),
    Field("ct_orig_daddr", "u8", 16,    ADDRESS,     HAND),
    Field("ct_reply_saddr", "u8", 16,   ADDRESS,     HAND),
    Field("ct_reply_daddr", "u8", 16,   ADDRESS,     HAND),
    # --why rows: JSON's "why" object (jsonl.py), on those rows only
    Field("why_info",    "u32",  1,     NUMBER,      HAND),     # ICMP: the MTU of frag needed
    Field("why",         "u8",   1,     NUMBER,      HAND),     # vocabulary.WHY_*
    Field("why_type",    "u8",   1,     NUMBER,      HAND),
    Field("why_code",    "u8",   1,     NUMBER,      HAND),
    # --why: the routing decision a row took (events/routing.py): JSON's "route"
    Field("route_table", "u32",  1,     NUMBER,      HAND),     # the table's id
    Field("route_err",   "s32",  1,     NUMBER,      HAND),     # 0 or -errno
    Field("route_oif",   "u32",  1,     NUMBER,      HAND),
    Field("route_iif",   "u32",  1,     NUMBER,      HAND),
    Field("route_known", "u8",   1,     NUMBER,      HAND),     # routing.KNOWN | HAS_PREFIX
    Field("route_type",  "u8",   1,     NUMBER,      HAND),     # RTN_*; 0: not read
    Field("route_gw_family", "u8", 1,   NUMBER,      HAND),     # 2, 10; 0: no gateway
    Field("route_prefix_len", "u8", 1,  NUMBER,      HAND),     # with HAS_PREFIX (IPv6)
    Field("route_dev",   "char", 16,    TEXT,        HAND),
    Field("route_gw",    "u8",   16,    BYTES,       HAND),
    Field("route_prefix", "u8",  16,    BYTES,       HAND),
    # --iptable: IPVS's choice for a new connection (events/ipvs.py): JSON's "ipvs"
    Field("ipvs_raddr",  "u8",   16,    BYTES,       HAND),     # the real server
    Field("ipvs_rport",  "u16",  1,     NETWORK,     HAND),
    Field("ipvs_known",  "u8",   1,     NUMBER,      HAND),     # ipvs.CHOSE, ipvs.NO_DEST
    Field("ipvs_fwd",    "u8",   1,     NUMBER,      HAND),     # IP_VS_CONN_F_* method
    Field("ipvs_daf",    "u8",   1,     NUMBER,      HAND),     # the real server's family
    Field("ipvs_sched",  "char", 16,    TEXT,        HAND),     # rr, wlc, ...
    # an encapsulated packet's outer header: JSON's "tunnel" object (events/tunnel.py)
    Field("tunnel_id",   "u32",  1,     NUMBER,      HAND),     # VXLAN, Geneve: the VNI
    Field("tunnel_sport", "u16", 1,     NETWORK,     HAND),
    Field("tunnel_dport", "u16", 1,     NETWORK,     HAND),
    Field("tunnel_saddr", "u8",  4,     BYTES,       HAND),     # IPv4
    Field("tunnel_daddr", "u8",  4,     BYTES,       HAND),
    Field("tunnel",      "u8",   1,     NUMBER,      HAND),     # tunnel.VXLAN...; 0: none
    # --why: the neighbour a packet waited for (events/neighbours.py): JSON's "neigh"
    Field("neigh_waited_us", "u32", 1,  NUMBER,      HAND),     # drop rows: queued to dropped
    Field("neigh_family", "u8",  1,     NUMBER,      HAND),     # 2 (ARP), 10 (ND); 0: none
    Field("neigh_state", "u8",   1,     NUMBER,      HAND),     # NUD_* at the row
    Field("neigh_addr",  "u8",   16,    BYTES,       HAND),
    # --on-trouble: sightings before this row its record could not keep (recorder.py)
    Field("unkept",      "u32",  1,     NUMBER,      HAND),
)


def lay_out(fields):
    """Set each field's offset and size as a C compiler lays the struct out
    (each member aligned to its type's size); the struct's size."""
    offset = widest = 0
    for f in fields:
        size, _code = C_TYPES[f.ctype]
        offset = -(-offset // size) * size
        f.offset, f.size = offset, size * f.count
        offset += f.size
        widest = max(widest, size)
    return -(-offset // widest) * widest


EVENT_SIZE = lay_out(FIELDS)
BY_NAME = {f.name: f for f in FIELDS}
DECODED = tuple(f for f in FIELDS if f.seen != PAD)     # decode.Event's attributes
# the fields the JSON event object shows from the table (jsonl.py): not by hand
JSON_FIELDS = tuple(f for f in DECODED if f.json not in (None, HAND))


def at(name):
    """The field of that name."""
    return BY_NAME[name]


def _gap(start, end):
    return ["%dx" % (end - start)] if end > start else []


def struct_of(fields, order="<", size=None):
    """A struct reading fields (in offset order) from the bytes where they
    are, skipping the others; size: pad the end to it."""
    parts, end = [], None
    for f in sorted(fields, key=lambda f: f.offset):
        parts += _gap(end if end is not None else 0, f.offset) + [f.code()]
        end = f.offset + f.size
    if size is not None:
        parts += _gap(end or 0, size)
    return struct.Struct(order + " ".join(parts))


def key_of(fields):
    """A struct whose unpack_from(raw) is a key of the bytes of fields, and
    of no others: the bytes of neighbouring fields in one string each."""
    parts, start, end = [], None, 0
    for f in sorted(fields, key=lambda f: f.offset):
        if start is not None and f.offset != end:
            parts.append("%ds" % (end - start))
            start = None
        if start is None:
            parts += _gap(end, f.offset)
            start = f.offset
        end = f.offset + f.size
    if start is not None:
        parts.append("%ds" % (end - start))
    return struct.Struct("<" + " ".join(parts))


def c_offsets():
    """name -> (offset, size, network byte order) of every field, for the
    rows in C (_rows.Formatter reads the fields it needs from this)."""
    return {f.name: (f.offset, f.size, f.seen == NETWORK) for f in FIELDS}


def ctypes_fields(rename=None, types=None):
    """The struct as a ctypes.Structure's _fields_, for one with _pack_ = 1
    (the padding C puts between fields is a field of its own here): the
    benchmark's model of the original tool reads the bytes this way.
    rename: name -> the name to give it; types: name -> its ctypes type
    instead of the table's (of the same size)."""
    import ctypes
    scalars = {"u64": ctypes.c_uint64, "u32": ctypes.c_uint32, "s32": ctypes.c_int32,
               "u16": ctypes.c_uint16, "u8": ctypes.c_uint8, "char": ctypes.c_char}
    rename, types = rename or {}, types or {}
    result, end = [], 0
    for f in FIELDS:
        if f.offset > end:
            result.append(("_gap%d" % end, ctypes.c_uint8 * (f.offset - end)))
        ctype = scalars[f.ctype] * f.count if f.count > 1 else scalars[f.ctype]
        ctype = types.get(f.name, ctype)
        assert ctypes.sizeof(ctype) == f.size, f.name
        result.append((rename.get(f.name, f.name), ctype))
        end = f.offset + f.size
    if EVENT_SIZE > end:
        result.append(("_gap%d" % end, ctypes.c_uint8 * (EVENT_SIZE - end)))
    return result
