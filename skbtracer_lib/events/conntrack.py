"""What conntrack had decided for an event's skb (skbtracer.c read_ct), in
words: the state (ctinfo), the status bits, the tuples and the NAT they
show; JSON's "ct" object and its inverse (-r), the text rows' --ct suffix,
-w's packet comments, --ct-mark/--ct-zone on saved events and the story's
words. An event's ct fields (events/fields.py):

  ct          skb->_nfct: the nf_conn's address | ctinfo in the low 3 bits;
              0 when the skb has no entry (not seen by conntrack yet, or
              found INVALID)
  ct_known    KNOWN_* bits: what of the nf_conn was read (its layout may be
              unknown where no BTF has struct nf_conn; -v says why)
  ct_status, ct_mark, ct_zone, ct_l4proto, ct_{orig,reply}_{saddr,daddr,sport,dport}
"""

from .vocabulary import L4_NAMES, PORTED, endpoint_text, is_icmp

KNOWN_CONN, KNOWN_MARK, KNOWN_ZONE = 1, 2, 4        # skbtracer.c CT_KNOWN_*
INFO_MASK = 7
UNTRACKED = 7
# enum ip_conntrack_info; 5 (IP_CT_NUMBER) is never set on an skb
INFO_NAMES = {0: "ESTABLISHED", 1: "RELATED", 2: "NEW", 3: "ESTABLISHED_REPLY",
              4: "RELATED_REPLY", UNTRACKED: "UNTRACKED"}
INFO_SHORT = {0: "EST", 1: "REL", 2: "NEW", 3: "EST,R", 4: "REL,R", UNTRACKED: "UNTR"}
# enum ip_conntrack_status, bit by bit (bit 12 was IPS_UNTRACKED before 4.14)
STATUS_NAMES = ("EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT",
                "SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT",
                "TEMPLATE", "NAT_CLASH", "HELPER", "OFFLOAD", "HW_OFFLOAD")
STATUS_BITS = {name: 1 << bit for bit, name in enumerate(STATUS_NAMES)}

# Drops conntrack itself decides, as skbtracer.c's probes on its functions
# see them: an event's ct_fault (drop rows), skbtracer.c's CT_FAULT_*.
# code -> (name in JSON and --ct rows, the story's words)
FAULT_INSERT, FAULT_TABLE_FULL, FAULT_HELPER = 1, 2, 3
FAULTS = {
    FAULT_INSERT: ("insert_failed", "conntrack lost the race to insert the packet's new entry "
                                    "(insert_failed: another packet of the same tuple was "
                                    "confirmed first)"),
    FAULT_TABLE_FULL: ("table_full", "conntrack could not make an entry for it (table full)"),
    FAULT_HELPER: ("helper", "a conntrack helper refused it (ftp, sip ...: nf_ct_helper_log)"),
}
_FAULT_BY_NAME = {name: code for code, (name, _words) in FAULTS.items()}


def fault_name(code):
    """JSON's drop "conntrack": the fault's name; None for none."""
    if not code:
        return None
    return FAULTS[code][0] if code in FAULTS else str(code)


def fault_code(name):
    """fault_name's inverse (-r); 0 for none or a name this version does not know."""
    return _FAULT_BY_NAME.get(name, 0) if isinstance(name, str) else 0


# Where netfilter drops an skb that carries no conntrack entry, the story
# says what that means (drop_words): conntrack runs at priority -200, after
# the raw table only, and leaves no entry on a packet it finds INVALID.
RAW_TABLE = "raw"


def drop_words(fault, nfct, netfilter_drop, nf_table, conntrack_here, invalid_rule=False):
    """The story's words on conntrack's part in a drop, or "".
    fault: the event's ct_fault; nfct: its skb's _nfct; netfilter_drop: the
    drop was netfilter's (reason NETFILTER_DROP, or a DROP verdict row);
    nf_table: the table of that verdict row (None without one);
    conntrack_here: a row in the drop's namespace carried an entry
    (conntrack is at work there); invalid_rule: the rule that dropped it
    matches the INVALID state (--nftrace named it)."""
    if fault:
        return FAULTS[fault][1] if fault in FAULTS else "conntrack fault %d" % fault
    if nfct or not netfilter_drop:
        return ""
    if nf_table == RAW_TABLE:
        return "no conntrack entry yet (the raw table runs before conntrack)"
    if conntrack_here or invalid_rule:
        return "no conntrack entry: INVALID"
    return "no conntrack entry: INVALID, or not seen by conntrack"


# --ct-state's words -> skbtracer.c ct_state_bit()'s bits (FILTER_CT_STATES)
CT_STATES = {"new": 1, "est": 2, "rel": 4, "inv": 8, "untracked": 16}
_INFO_STATE = {0: "est", 3: "est", 1: "rel", 4: "rel", 2: "new", 5: "new", UNTRACKED: "untracked"}


def state_word(nfct):
    """The --ct-state word of an skb's _nfct (ct_state_bit()'s class)."""
    return "inv" if not nfct else _INFO_STATE.get(nfct & INFO_MASK, "est")


def mark_zone_match(fields, mark, zone):
    """--ct-mark (mark, mask) and --ct-zone on an event's ct fields (a
    dict, fields_of()), as skbtracer.c prepare() applies them: no entry, or
    a mark or zone that was not read, does not match."""
    known = fields["ct_known"] if fields["ct"] else 0
    if mark is not None and not (known & KNOWN_MARK and fields["ct_mark"] & mark[1] == mark[0]):
        return False
    return zone is None or bool(known & KNOWN_ZONE and fields["ct_zone"] == zone)


def info_name(nfct):
    info = nfct & INFO_MASK
    return INFO_NAMES.get(info, str(info))


def conn_id(nfct):
    """The connection's short id: the low 32 bits of its nf_conn's address,
    in hex; None without one (no entry, untracked). An address is reused
    once its connection is freed: it tells connections of one run apart."""
    conn = nfct & ~INFO_MASK
    return "%08x" % (conn & 0xFFFFFFFF) if conn else None


def status_names(status):
    return [name for bit, name in enumerate(STATUS_NAMES) if status & (1 << bit)]


def _ported(family, l4proto):
    return l4proto in PORTED or l4proto == 132     # SCTP's ports too


def tuple_object(e, direction):
    """One direction's tuple of an event as JSON."""
    saddr = getattr(e, "ct_%s_saddr" % direction)
    daddr = getattr(e, "ct_%s_daddr" % direction)
    sport = getattr(e, "ct_%s_sport" % direction)
    dport = getattr(e, "ct_%s_dport" % direction)
    obj = {"proto": L4_NAMES.get(e.ct_l4proto, str(e.ct_l4proto)), "src": saddr, "dst": daddr}
    if _ported(e.family, e.ct_l4proto):
        obj["sport"], obj["dport"] = sport, dport
    elif is_icmp(e.family, e.ct_l4proto):
        obj["icmp_id"] = sport
    return obj


def json_object(e):
    """The event's "ct" object; None when its skb had no entry."""
    if not e.ct:
        return None
    conn = bool(e.ct_known & KNOWN_CONN)
    return {"state": info_name(e.ct), "info": e.ct & INFO_MASK, "id": conn_id(e.ct),
            "status": status_names(e.ct_status) if conn else None,
            "status_bits": e.ct_status if conn else None,
            "mark": e.ct_mark if e.ct_known & KNOWN_MARK else None,
            "zone": e.ct_zone if e.ct_known & KNOWN_ZONE else None,
            "orig": tuple_object(e, "orig") if conn else None,
            "reply": tuple_object(e, "reply") if conn else None}


_INFO_BY_NAME = {name: info for info, name in INFO_NAMES.items()}
_L4_BY_NAME = {name: number for number, name in L4_NAMES.items()}


def _number(value, bits):
    """A saved number, or 0 where it is not one that fits (a damaged file)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits
    return value if ok else 0


def _text(value):
    return value if isinstance(value, str) else ""


def fields_of(obj):
    """A saved "ct" object's event fields (json_object's inverse, for -r);
    the nf_conn's address is rebuilt from its id (its low 32 bits). None
    (no entry) or anything but an object: all zero; a value of the wrong
    kind: zero or empty."""
    values = {"ct": 0, "ct_status": 0, "ct_mark": 0, "ct_zone": 0, "ct_l4proto": 0,
              "ct_known": 0}
    for direction in ("orig", "reply"):
        for end in ("saddr", "daddr"):
            values["ct_%s_%s" % (direction, end)] = ""
        for end in ("sport", "dport"):
            values["ct_%s_%s" % (direction, end)] = 0
    if not isinstance(obj, dict):
        return values
    info = obj.get("info")
    if not isinstance(info, int):
        info = _INFO_BY_NAME.get(obj.get("state"), 0)
    try:
        conn = int(obj["id"], 16) & 0xFFFFFFFF & ~INFO_MASK    # enough to tell them apart
    except (KeyError, TypeError, ValueError):
        conn = 0
    values["ct"] = conn | (info & INFO_MASK) or UNTRACKED   # an entry: never 0
    for key, field, bits, known in (("status_bits", "ct_status", 32, KNOWN_CONN),
                                    ("mark", "ct_mark", 32, KNOWN_MARK),
                                    ("zone", "ct_zone", 16, KNOWN_ZONE)):
        if obj.get(key) is not None:
            values[field] = _number(obj[key], bits)
            values["ct_known"] |= known
    for direction in ("orig", "reply"):
        tup = obj.get(direction)
        if not isinstance(tup, dict):
            continue
        proto = tup.get("proto")
        values["ct_l4proto"] = _L4_BY_NAME.get(proto) or _number(proto, 8)
        values["ct_%s_saddr" % direction] = _text(tup.get("src"))
        values["ct_%s_daddr" % direction] = _text(tup.get("dst"))
        values["ct_%s_sport" % direction] = _number(tup.get("sport", tup.get("icmp_id")), 16)
        values["ct_%s_dport" % direction] = _number(tup.get("dport"), 16)
    return values


def _nat(e):
    """[(kind, before, after)] the tuples show: DNAT when the reply does
    not come from where the original went, SNAT when it does not go back
    to where the original came from."""
    if not e.ct_known & KNOWN_CONN:
        return []
    ported = _ported(e.family, e.ct_l4proto)
    found = []
    for kind, before, after in (
            ("DNAT", (e.ct_orig_daddr, e.ct_orig_dport), (e.ct_reply_saddr, e.ct_reply_sport)),
            ("SNAT", (e.ct_orig_saddr, e.ct_orig_sport), (e.ct_reply_daddr, e.ct_reply_dport))):
        if before[0] != after[0] or (ported and before[1] != after[1]):
            found.append((kind, endpoint_text(before[0], before[1], ported, e.family),
                          endpoint_text(after[0], after[1], ported, e.family)))
    return found


def row_suffix(e):
    """--ct: what TRACE_INFO gets after it (" ct=NEW", " ct=EST,R dnat
    10.96.0.10:53=>10.244.1.3:5353", a drop conntrack decided: " ct_drop=
    insert_failed"); "" when the skb has no entry and no such drop."""
    text = ""
    if e.ct:
        info = e.ct & INFO_MASK
        text = " ct=" + INFO_SHORT.get(info, str(info))
        for kind, before, after in _nat(e):
            text += " %s %s=>%s" % (kind.lower(), before, after)
    if e.ct_fault:
        text += " ct_drop=" + fault_name(e.ct_fault)
    return text


def comment_suffix(e, in_row=False):
    """-w's packet comment after the row: row_suffix() (unless the row has
    it already, --ct: in_row), then the entry's id, status bits, mark and
    zone where they were read (" ct=NEW id=12345600
    status=CONFIRMED,DST_NAT mark=0x2a zone=7"); "" without an entry."""
    if not e.ct:
        return ""
    text = "" if in_row else row_suffix(e)
    cid = conn_id(e.ct)
    if cid:
        text += " id=" + cid
    if e.ct_known & KNOWN_CONN and e.ct_status:
        text += " status=" + ",".join(status_names(e.ct_status))
    if e.ct_known & KNOWN_MARK:
        text += " mark=%#x" % e.ct_mark
    if e.ct_known & KNOWN_ZONE:
        text += " zone=%d" % e.ct_zone
    return text


def connection_text(e):
    """The story's words for one connection as an event saw it: 'NEW ->
    DNAT 10.96.0.10:53 => 10.244.1.3:5353', 'ESTABLISHED_REPLY', 'UNTRACKED'."""
    text = info_name(e.ct)
    for kind, before, after in _nat(e):
        text += " -> %s %s => %s" % (kind, before, after)
    return text


MAX_STORY_CONNECTIONS = 3


def story_text(events):
    """A packet's connections as it went, in the order it met them (one per
    conntrack it passed: the node's, a pod's ...): each connection's words
    from its last event (after NAT was decided). "" when it met none."""
    last = {}
    for e in events:
        if e.ct and e.ct & ~INFO_MASK:
            last[e.ct & ~INFO_MASK] = e     # dicts keep the first sighting's order
        elif e.ct:
            last.setdefault(UNTRACKED, e)
    texts = [connection_text(e) for e in last.values()]
    if len(texts) > MAX_STORY_CONNECTIONS:
        texts = texts[:MAX_STORY_CONNECTIONS] + ["..."]
    return ", ".join(texts)


class Service:
    """A Service as the story's connections show it: the original
    destination of DNATed connections (its address and port) and, per
    endpoint conntrack chose (the reply's source), its connections; netns:
    the namespaces whose rows carried them (where the DNAT was decided)."""

    __slots__ = ("l4proto", "family", "address", "port", "endpoints", "netns")

    def __init__(self, l4proto, family, address, port):
        self.l4proto, self.family, self.address, self.port = l4proto, family, address, port
        self.endpoints = {}     # (address, port) -> {original tuples}, in the order first seen
        self.netns = set()

    @property
    def ported(self):
        return _ported(self.family, self.l4proto)

    def text(self, address=None, port=None):
        """'10.96.0.10:53'; of one of its endpoints with address, port."""
        if address is None:
            address, port = self.address, self.port
        return endpoint_text(address, port, self.ported, self.family)


def services(events):
    """The Services the events' connections went to: DNATed connections
    grouped by their original destination and the endpoint conntrack chose:
    {(l4proto, family, address, port): Service}, in the order first seen."""
    found = {}
    for e in events:
        if not e.ct_known & KNOWN_CONN:
            continue
        if not any(kind == "DNAT" for kind, _before, _after in _nat(e)):
            continue
        ported = _ported(e.family, e.ct_l4proto)      # else no port: ICMP's id is per connection
        key = (e.ct_l4proto, e.family, e.ct_orig_daddr, e.ct_orig_dport if ported else 0)
        service = found.get(key)
        if service is None:
            service = found[key] = Service(*key)
        conn = (e.ct_l4proto, e.ct_orig_saddr, e.ct_orig_sport, e.ct_orig_daddr, e.ct_orig_dport)
        endpoint = (e.ct_reply_saddr, e.ct_reply_sport if ported else 0)
        service.endpoints.setdefault(endpoint, set()).add(conn)
        service.netns.add(e.netns)
    return found
