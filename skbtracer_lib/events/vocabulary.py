"""The names skbtracer gives to the numbers in an event, in one place:
event kinds, protocols, ICMP messages, TCP flags, packet types, netfilter
families, hooks and verdicts, and a probe id's name."""

KIND_ROUTE, KIND_IPTABLE, KIND_DROP, KIND_WHY = 1, 2, 3, 4
KINDS = {KIND_ROUTE: "route", KIND_IPTABLE: "iptable", KIND_DROP: "drop", KIND_WHY: "why"}
KIND_NUMBERS = {name: number for number, name in KINDS.items()}

# protocol numbers (IPPROTO_*): names in JSON, letters in the story's FLOW column
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
PORTED = (TCP, UDP)                               # the protocols whose ports rows show
L4_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "icmpv6"}
L4_NUMBERS = {"tcp": TCP, "udp": UDP, "icmp": ICMP}     # --proto and -r's filters
PROTO_LETTERS = {TCP: "T", UDP: "U"}
ICMP_PROTOCOLS = {4: ICMP, 6: ICMPV6}             # family -> its ICMP's protocol number
ICMP_KINDS = {4: {8: "request", 0: "reply"}, 6: {128: "request", 129: "reply"}}

# TCP flags in the original's order, CWR first
_TCP_FLAG_NAMES = [(0x80, "CWR"), (0x40, "ECE"), (0x20, "URG"), (0x10, "ACK"),
                   (0x08, "PSH"), (0x04, "RST"), (0x02, "SYN"), (0x01, "FIN")]
TCP_FLAGS = [",".join(name for bit, name in _TCP_FLAG_NAMES if value & bit)
             for value in range(256)]
TCP_FLAG_BITS = {text: value for value, text in enumerate(TCP_FLAGS)}

PKT_TYPES = {0: "HOST", 1: "BROADCAST", 2: "MULTICAST", 3: "OTHERHOST",
             4: "OUTGOING", 5: "LOOPBACK", 6: "USER", 7: "KERNEL"}
NF_PROTOCOLS = {0: "UNSPEC", 1: "INET", 2: "IPV4", 3: "ARP", 5: "NETDEV", 7: "BRIDGE", 10: "IPV6"}
NF_HOOKS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING", 5: "INGRESS"}
NF_BRIDGE_HOOKS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING",
                   5: "BROUTING"}
NF_HOOKS_BY_PF = {3: {0: "IN", 1: "OUT", 2: "FORWARD"},          # arp
                  5: {0: "INGRESS", 1: "EGRESS"},                 # netdev
                  7: NF_BRIDGE_HOOKS}
NF_VERDICTS = {0: "DROP", 1: "ACCEPT", 2: "STOLEN", 3: "QUEUE", 4: "REPEAT", 5: "STOP"}


def is_icmp(family, l4proto):
    return ICMP_PROTOCOLS.get(family) == l4proto


def icmp_kind(family, icmp_type):
    """'request', 'reply' or '' for other ICMP messages."""
    return ICMP_KINDS[4 if family == 4 else 6].get(icmp_type, "")


def endpoint_text(addr, port, ported, family):
    """An address with its port where the protocol has ports ("[fd00::2]:53"
    for IPv6), for the story and conntrack's words."""
    if not ported:
        return addr
    return "[%s]:%d" % (addr, port) if family == 6 else "%s:%d" % (addr, port)


def proto_letter(family, l4proto):
    """T, U, I (ICMP of the family) or the number."""
    if l4proto in PROTO_LETTERS:
        return PROTO_LETTERS[l4proto]
    return "I" if is_icmp(family, l4proto) else str(l4proto)


def hook_name(pf, hook):
    return NF_HOOKS_BY_PF.get(pf, NF_HOOKS).get(hook, str(hook))


def hook_number(pf, name):
    """hook_name()'s inverse (0 for a name the family has no hook of)."""
    return next((k for k, v in NF_HOOKS_BY_PF.get(pf, NF_HOOKS).items() if v == name), 0)


def verdict_name(verdict):
    return NF_VERDICTS.get(verdict, str(verdict))


def pf_prefix(pf):
    """'' for IPv4 (the usual case), else 'bridge ', 'ipv6 '..."""
    return "" if pf == 2 else "%s " % NF_PROTOCOLS.get(pf, str(pf)).lower()


def probe_name(probe_names, index):
    """The probe's function or tracepoint; a made-up one for an id no probe
    has (an event that is garbage)."""
    return probe_names[index] if 0 <= index < len(probe_names) else "probe%d" % index


# --why rows (skbtracer.c WHY_*): what the stack sent back because of a
# packet, or that it was queued waiting for its neighbour (events/neighbours.py)
WHY_ICMP, WHY_RESET, WHY_NEIGH = 1, 2, 3
WHY_NAMES = {WHY_ICMP: "icmp", WHY_RESET: "tcp_reset", WHY_NEIGH: "neigh_queued"}
WHY_NUMBERS = {name: number for number, name in WHY_NAMES.items()}
# ICMP errors by (family, type, code), code None: any code of the type; in
# the story's words ("ICMP port unreachable sent back")
ICMP_ERRORS = {
    (4, 3, 0): "net unreachable", (4, 3, 1): "host unreachable",
    (4, 3, 2): "protocol unreachable", (4, 3, 3): "port unreachable",
    (4, 3, 4): "frag needed", (4, 3, 9): "net admin prohibited",
    (4, 3, 10): "host admin prohibited", (4, 3, 13): "admin prohibited",
    (4, 3, None): "destination unreachable", (4, 11, 0): "TTL exceeded",
    (4, 11, 1): "reassembly time exceeded", (4, 5, None): "redirect",
    (4, 12, None): "parameter problem",
    (6, 1, 0): "no route", (6, 1, 1): "admin prohibited", (6, 1, 3): "address unreachable",
    (6, 1, 4): "port unreachable", (6, 1, None): "destination unreachable",
    (6, 2, None): "packet too big", (6, 3, 0): "hop limit exceeded",
    (6, 3, 1): "reassembly time exceeded", (6, 4, None): "parameter problem",
}
MTU_ERRORS = {(4, 3, 4), (6, 2, 0)}     # their info is the MTU


def icmp_error_name(family, icmp_type, code):
    """'port unreachable', 'frag needed'...; 'type 42 code 0' for others."""
    family = 6 if family == 6 else 4
    name = ICMP_ERRORS.get((family, icmp_type, code)) or ICMP_ERRORS.get((family, icmp_type, None))
    return name or "type %d code %d" % (icmp_type, code)


def why_mtu(family, why, icmp_type, code, info):
    """The MTU an ICMP error told (frag needed, packet too big), or None (the
    tracepoint does not give it: info 0)."""
    family = 6 if family == 6 else 4
    if why == WHY_ICMP and (family, icmp_type, code) in MTU_ERRORS and info:
        return info
    return None


def sent_back_words(family, why, icmp_type, code, info):
    """The story's words for a --why row of a packet of family (the packet
    that caused it): 'ICMP port unreachable sent back', 'ICMP frag needed
    (MTU 1400) sent back', 'TCP reset sent back'."""
    if why == WHY_RESET:
        return "TCP reset sent back"
    if why != WHY_ICMP:
        return "%s sent back" % WHY_NAMES.get(why, "why %d" % why)
    mtu = why_mtu(family, why, icmp_type, code, info)
    return "%s %s%s sent back" % ("ICMPv6" if family == 6 else "ICMP",
                                  icmp_error_name(family, icmp_type, code),
                                  " (MTU %d)" % mtu if mtu else "")


def why_trace_info(why, icmp_type, code, mtu):
    """TRACE_INFO's words after the probe's name: ' type=3 code=3' (with
    ' mtu=1400' where the kprobe read it); '' for resets."""
    if why != WHY_ICMP:
        return ""
    return " type=%d code=%d%s" % (icmp_type, code, " mtu=%d" % mtu if mtu else "")
