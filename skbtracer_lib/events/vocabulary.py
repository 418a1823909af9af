"""The names skbtracer gives to the numbers in an event, in one place:
event kinds, protocols, ICMP messages, TCP flags, packet types, netfilter
families, hooks and verdicts, and a probe id's name."""

KIND_ROUTE, KIND_IPTABLE, KIND_DROP = 1, 2, 3
KINDS = {KIND_ROUTE: "route", KIND_IPTABLE: "iptable", KIND_DROP: "drop"}
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
