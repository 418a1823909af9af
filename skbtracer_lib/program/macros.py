"""What Python tells skbtracer.c, and the C names Python calls, listed once.

skbtracer.c asks most of these with #ifdef, where a misspelt name compiles
as false and nothing says so. The generators (source, layout, probes,
pcapfilter) take every name from here, so a typo on the Python side is an
AttributeError; tests/unit/test_macros.py parses skbtracer.c and checks
that every name it tests or uses is listed here (or defined by the C itself,
the kernel headers or bcc), that every entry here is used there, and that
the functions, macros and maps named below exist in it.
"""

from typing import NamedTuple

# kinds of #define
FLAG = "flag"            # defined (as 1) or not: the C asks #ifdef
NUMBER = "number"        # an integer the C uses as a value
TEXT = "C text"          # a C expression


class Macro(NamedTuple):
    name: str
    kind: str
    why: str


MACROS = {}     # name -> Macro: every #define the generated head may hold


def _macro(name, kind, why):
    if name in MACROS:
        raise ValueError("macro %s listed twice" % name)
    MACROS[name] = Macro(name, kind, why)
    return name


# struct layouts (layout.py); also the L_<FIELD>_* family below
SKBT_LAYOUT_HEADERS = _macro("SKBT_LAYOUT_HEADERS", FLAG,
                             "no BTF: the C computes the L_* layouts from the installed headers")
L_SKB_SPAN_OFF = _macro("L_SKB_SPAN_OFF", NUMBER,
                        "where the sk_buff fields find_packet reads in one go start")
L_SKB_SPAN_LEN = _macro("L_SKB_SPAN_LEN", NUMBER,
                        "how long that span is; undefined: read the fields one by one")
L_SKB_SPAN_HAS_TAIL = _macro("L_SKB_SPAN_HAS_TAIL", FLAG,
                             "the span holds skb->tail too (expressions, -w)")
L_SKB_SPAN_HAS_NFCT = _macro("L_SKB_SPAN_HAS_NFCT", FLAG,
                             "the span holds skb->_nfct too (-H/-P/--proto matching the connection)")
L_SKB_SPAN_HAS_VLAN = _macro("L_SKB_SPAN_HAS_VLAN", FLAG,
                             "the span holds the offloaded VLAN tag's fields too (expressions)")
HAVE_XT_LAYOUT = _macro("HAVE_XT_LAYOUT", FLAG, "struct xt_table's layout is known: table names")
HAVE_NFT_LAYOUT = _macro("HAVE_NFT_LAYOUT", FLAG,
                         "nf_tables' struct layouts are known: table and chain names")
HAVE_CT_NFCT = _macro("HAVE_CT_NFCT", FLAG, "sk_buff has _nfct: each event's conntrack state")
HAVE_CT_CONN = _macro("HAVE_CT_CONN", FLAG,
                      "struct nf_conn's layout is known: status and tuples (one read)")
HAVE_CT_MARK = _macro("HAVE_CT_MARK", FLAG, "struct nf_conn has mark (CONFIG_NF_CONNTRACK_MARK)")
HAVE_CT_ZONE = _macro("HAVE_CT_ZONE", FLAG,
                      "struct nf_conn has zone (CONFIG_NF_CONNTRACK_ZONES)")

# modes (source.mode_defines)
MODE_IPTABLE = _macro("MODE_IPTABLE", FLAG, "--iptable: the netfilter verdict probes")
MODE_DROP = _macro("MODE_DROP", FLAG, "--drop: kfree_skb makes rows")
MODE_WHY = _macro("MODE_WHY", FLAG, "--why: ICMP errors and TCP resets sent because of a packet")
ROUTE_DECISIONS = _macro("ROUTE_DECISIONS", FLAG,
                         "--why: fib:fib_table_lookup is kept per CPU, rows take their decision")
ROUTE6_DECISIONS = _macro("ROUTE6_DECISIONS", FLAG,
                          "--why: fib6:fib6_table_lookup is kept per CPU, rows take their decision")
NEIGH_WAITS = _macro("NEIGH_WAITS", FLAG, "--why: a packet queued for ARP/ND resolution is a row, "
                     "and its drop row tells the neighbour and the wait")
KEEP = _macro("KEEP", FLAG, "--keep: an skb that matched once is followed until freed")
KEEP_ENTRIES = _macro("KEEP_ENTRIES", NUMBER, "--keep: skbs followed at once at most")
STACK_ALL = _macro("STACK_ALL", FLAG, "--callstack: a kernel stack under every row")
STACK_DROPS = _macro("STACK_DROPS", FLAG, "--dropstack: a kernel stack under drop rows")
STACK_ENTRIES = _macro("STACK_ENTRIES", NUMBER, "stacks kept in the stack map at most")
RECORDER = _macro("RECORDER", FLAG, "--on-trouble: rows are recorded, sent on trouble (recorder.py)")
RECORDER_ENTRIES = _macro("RECORDER_ENTRIES", NUMBER, "--recorder-size: skbs recorded at most")
RECORDER_SIGHTINGS = _macro("RECORDER_SIGHTINGS", NUMBER,
                            "--on-trouble: an skb's last rows kept (a power of two)")
RECORDER_COUNTS = _macro("RECORDER_COUNTS", NUMBER, "--on-trouble: the counters' number")
RECORDER_COUNT_STARTED = _macro("RECORDER_COUNT_STARTED", NUMBER, "counter: records started")
RECORDER_COUNT_ENDED = _macro("RECORDER_COUNT_ENDED", NUMBER, "counter: records ended (freed)")
RECORDER_COUNT_DROPS = _macro("RECORDER_COUNT_DROPS", NUMBER, "counter: drops told")
RECORDER_COUNT_DUPLICATES = _macro("RECORDER_COUNT_DUPLICATES", NUMBER,
                                   "counter: duplicates told")
RECORDER_COUNT_SLOW = _macro("RECORDER_COUNT_SLOW", NUMBER, "counter: slow skbs told")
RECORDER_COUNT_PLACES = _macro("RECORDER_COUNT_PLACES", NUMBER,
                               "counter: places noted (new keys of the places map)")
RECORDER_SLOW_NS = _macro("RECORDER_SLOW_NS", NUMBER, "--slow: in flight longer is trouble")
RECORDER_DUPLICATE_NS = _macro("RECORDER_DUPLICATE_NS", NUMBER,
                               "a copy arriving where one arrived this long ago is a duplicate")
RECORDER_PLACE = _macro("RECORDER_PLACE", TEXT,
                        "RECORDER_PLACE(p): is probe p a receive point (story.points.RX_POINTS)")
RECORDER_UNTIMED = _macro("RECORDER_UNTIMED", TEXT,
                          "RECORDER_UNTIMED(p): probe p frees or reads from a socket: not --slow's")
CAPTURE_BYTES = _macro("CAPTURE_BYTES", NUMBER, "-w: packet bytes copied per row at most")
CT_FAULTS = _macro("CT_FAULTS", FLAG,
                   "--drop on kprobes: drops conntrack decides are named (__nf_conntrack_confirm)")
CT_FAULT_INSERT = _macro("CT_FAULT_INSERT", NUMBER,
                         "ct_fault: the new entry lost the insert race (conntrack.FAULT_INSERT)")
CT_FAULT_HELPER = _macro("CT_FAULT_HELPER", NUMBER,
                         "ct_fault: a conntrack helper refused it (conntrack.FAULT_HELPER)")
CT_FAULT_TABLE_FULL = _macro("CT_FAULT_TABLE_FULL", NUMBER,
                             "ct_fault: no entry could be made (conntrack.FAULT_TABLE_FULL)")

# filters (source.filter_defines): numbers in the packet's byte order as loaded
FILTER_ADDR4 = _macro("FILTER_ADDR4", NUMBER, "-H with an IPv4 address")
FILTER_ADDR6_0 = _macro("FILTER_ADDR6_0", NUMBER, "-H with an IPv6 address: its first 8 bytes")
FILTER_ADDR6_1 = _macro("FILTER_ADDR6_1", NUMBER, "-H with an IPv6 address: its last 8 bytes")
FILTER_L4PROTO = _macro("FILTER_L4PROTO", NUMBER, "--proto tcp|udp: the IP protocol number")
FILTER_ICMP = _macro("FILTER_ICMP", FLAG, "--proto icmp: ICMP or ICMPv6")
FILTER_PORT = _macro("FILTER_PORT", NUMBER, "-P: source or destination port")
FILTER_ICMPID = _macro("FILTER_ICMPID", NUMBER, "--icmpid: the ICMP echo id")
FILTER_PID = _macro("FILTER_PID", NUMBER, "-p: the process id")
CT_MATCH = _macro("CT_MATCH", FLAG,
                  "-H, --proto, -P also match the connection's original tuple (no --header-only)")
FILTER_CT_STATES = _macro("FILTER_CT_STATES", NUMBER,
                          "--ct-state: the conntrack classes wanted, as ct_state_bit()'s bits")
FILTER_CT_MARK = _macro("FILTER_CT_MARK", NUMBER,
                        "--ct-mark: the conntrack mark wanted, after FILTER_CT_MARK_MASK")
FILTER_CT_MARK_MASK = _macro("FILTER_CT_MARK_MASK", NUMBER, "--ct-mark: the mark's bits compared")
FILTER_CT_ZONE = _macro("FILTER_CT_ZONE", NUMBER, "--ct-zone: the conntrack zone id wanted")
FILTER_NETNS = _macro("FILTER_NETNS", TEXT,
                      "-N: FILTER_NETNS(n), is namespace inode n one of those given")

# encapsulated packets (events/tunnel.py): find_inner's types and ports
TUNNEL_VXLAN = _macro("TUNNEL_VXLAN", NUMBER, "event tunnel: VXLAN (tunnel.VXLAN)")
TUNNEL_GENEVE = _macro("TUNNEL_GENEVE", NUMBER, "event tunnel: Geneve (tunnel.GENEVE)")
TUNNEL_IPIP = _macro("TUNNEL_IPIP", NUMBER, "event tunnel: IPIP (tunnel.IPIP)")
TUNNEL_SIT = _macro("TUNNEL_SIT", NUMBER, "event tunnel: SIT, IPv6 in IPv4 (tunnel.SIT)")
VXLAN_PORT = _macro("VXLAN_PORT", TEXT, "VXLAN_PORT(p): is UDP port p a VXLAN port")
GENEVE_PORT = _macro("GENEVE_PORT", TEXT, "GENEVE_PORT(p): is UDP port p a Geneve port")

# a tcpdump expression (pcapfilter.py)
PCAP_FILTER = _macro("PCAP_FILTER", FLAG, "an expression: pcap_match_l2/l3 are in the text")
PCAP_CHUNK = _macro("PCAP_CHUNK", NUMBER, "packet bytes read at once for the expression")
PCAP_INSERT_TAG = _macro("PCAP_INSERT_TAG", FLAG,
                         "compiled as for a file: an offloaded VLAN tag goes back into the frame")
PCAP_NEEDS_LEN = _macro("PCAP_NEEDS_LEN", FLAG, "the expression asks the packet's length")

# probes (probes.py)
UNRESOLVED_PROBE_ID = _macro("UNRESOLVED_PROBE_ID", NUMBER,
                             "the kprobe backend's route programs: the id of an unknown address")
PROBE_IDS_ENTRIES = _macro("PROBE_IDS_ENTRIES", NUMBER,
                           "probe addresses the route kprobes can tell apart at most")
ROUTE_FUNC_IP = _macro("ROUTE_FUNC_IP", FLAG,
                       "--all/--func with kprobe-multi: the function from bpf_get_func_ip")
DROP_PROBE_ID = _macro("DROP_PROBE_ID", NUMBER, "--drop/--keep: kfree_skb's probe id")
DROP_REASON_ARG = _macro("DROP_REASON_ARG", NUMBER,
                         "5.17+: the drop reason's index in kfree_skb's arguments")
DROP_REASON_CONSUMED = _macro("DROP_REASON_CONSUMED", NUMBER,
                              "SKB_CONSUMED's value: a normal free, not a drop")
DROP_REASON_NEIGH_FAILED = _macro("DROP_REASON_NEIGH_FAILED", NUMBER,
                                  "NEIGH_FAILED's value: a packet its neighbour's failure dropped")
DROP_REASON_NEIGH_QUEUEFULL = _macro("DROP_REASON_NEIGH_QUEUEFULL", NUMBER,
                                     "NEIGH_QUEUEFULL's value: pushed out of a full ARP/ND queue")
DROP_REASON_NEIGH_DEAD = _macro("DROP_REASON_NEIGH_DEAD", NUMBER,
                                "NEIGH_DEAD's value: its neighbour entry was being removed")
DROP_REASON_RPFILTER = _macro("DROP_REASON_RPFILTER", NUMBER,
                              "IP_RPFILTER's value: the reverse path check dropped it (--why "
                              "tells its lookup)")
CONSUME_PROBE_ID = _macro("CONSUME_PROBE_ID", NUMBER, "--route: consume_skb's probe id")
IPVS_DECISIONS = _macro("IPVS_DECISIONS", FLAG,
                        "--iptable with ip_vs loaded: ip_vs_schedule's choice on the packet's row")
IPVS_PROBE_ID = _macro("IPVS_PROBE_ID", NUMBER, "--iptable: ip_vs_schedule's probe id")
TP_BTF = _macro("TP_BTF", FLAG, "the tracepoint programs are loaded as tp_btf (tp_btf.py): "
                "they read the skb's fields by plain loads")

# the event path (events/reader.py)
RING_BUFFER_PAGES = _macro("RING_BUFFER_PAGES", NUMBER,
                           "5.8+: the ring buffer's size; undefined: a perf buffer")


# The L_<FIELD>_* family (NUMBER): where a kernel struct field lies, for every
# field of layout.FIELD_TABLES; skbtracer.c reads them with KREAD(obj, FIELD).
def layout_offset(field):
    return "L_%s_OFF" % field


def layout_size(field):
    return "L_%s_SIZE" % field


def layout_shift(field):
    """A bitfield's shift within its bytes."""
    return "L_%s_SHIFT" % field


def layout_bits(field):
    """A bitfield's width."""
    return "L_%s_BITS" % field


LAYOUT_MACROS = (layout_offset, layout_size, layout_shift, layout_bits)


class Instantiator(NamedTuple):
    """A macro skbtracer.c defines and a generated probe line calls; it
    defines the functions named, "{param}" standing for its argument."""
    name: str
    params: tuple
    functions: tuple

    def line(self, *args):
        return "%s(%s)" % (self.name, ", ".join(str(a) for a in args))

    def function_names(self, *args):
        values = dict(zip(self.params, args))
        return tuple(f.format(**values) for f in self.functions)


# one program per skb argument position, shared by the route kprobes
ROUTE_KPROBE = Instantiator("ROUTE_KPROBE", ("argn",), ("route_arg{argn}",))
# the same for struct sk_buff ** arguments (br_handle_frame)
ROUTE_KPROBE_DEREF = Instantiator("ROUTE_KPROBE_DEREF", ("argn",), ("route_deref_arg{argn}",))
ROUTE_RAW_TP = Instantiator("ROUTE_RAW_TP", ("id", "argi"), ("route_{id}",))
XT_KPROBES = Instantiator("XT_KPROBES", ("id", "skb_arg", "state_arg", "table_arg"),
                          ("nf_enter_{id}", "nf_return_{id}"))
NFT_KPROBES = Instantiator("NFT_KPROBES", ("id",), ("nf_enter_{id}", "nf_return_{id}"))
# --why: the ICMP error / TCP reset a packet caused, as tracepoints or kprobes
WHY_ICMP_TP = Instantiator("WHY_ICMP_TP", ("id",), ("why_icmp_{id}",))
WHY_RESET_TP = Instantiator("WHY_RESET_TP", ("id",), ("why_reset_{id}",))
WHY_ICMP_KPROBE = Instantiator("WHY_ICMP_KPROBE", ("id", "info_be"), ("why_icmp_{id}",))
WHY_RESET_KPROBE = Instantiator("WHY_RESET_KPROBE", ("id", "skb_arg"), ("why_reset_{id}",))
# --why: a packet queued for its neighbour (neigh:neigh_event_send_done)
WHY_NEIGH_TP = Instantiator("WHY_NEIGH_TP", ("id",), ("why_neigh_{id}",))
INSTANTIATORS = (ROUTE_KPROBE, ROUTE_KPROBE_DEREF, ROUTE_RAW_TP, XT_KPROBES, NFT_KPROBES,
                 WHY_ICMP_TP, WHY_RESET_TP, WHY_ICMP_KPROBE, WHY_RESET_KPROBE, WHY_NEIGH_TP)

# functions skbtracer.c defines that Python attaches by name
ON_KFREE_SKB = "on_kfree_skb"
ON_CONSUME_SKB = "on_consume_skb"
ON_CLONE_ENTER = "on_clone_enter"
ON_CLONE_RETURN = "on_clone_return"
ON_CT_CONFIRM = "on_ct_confirm"
ON_CT_CONFIRM_RETURN = "on_ct_confirm_return"
ON_CT_HELPER_LOG = "on_ct_helper_log"
ON_CT_ALLOC = "on_ct_alloc"
ON_CT_ALLOC_RETURN = "on_ct_alloc_return"
ON_FIB_LOOKUP = "on_fib_lookup"
ON_FIB6_LOOKUP = "on_fib6_lookup"
ON_IPVS_SCHEDULE = "on_ipvs_schedule"
ON_IPVS_SCHEDULE_RETURN = "on_ipvs_schedule_return"
ON_ICMP_SENT = "on_icmp_sent"
C_FUNCTIONS = (ON_KFREE_SKB, ON_CONSUME_SKB, ON_CLONE_ENTER, ON_CLONE_RETURN, ON_CT_CONFIRM,
               ON_CT_CONFIRM_RETURN, ON_CT_HELPER_LOG, ON_CT_ALLOC, ON_CT_ALLOC_RETURN,
               ON_FIB_LOOKUP, ON_FIB6_LOOKUP, ON_IPVS_SCHEDULE, ON_IPVS_SCHEDULE_RETURN,
               ON_ICMP_SENT)

# maps skbtracer.c declares that Python reads by name
MAP_EVENTS = "events"
MAP_LOST_EVENTS = "lost_events"
MAP_STACKS = "stacks"
MAP_PROBE_IDS = "probe_ids"
MAP_FLIGHTS = "flights"
MAP_RECORDER_COUNTS = "recorder_counts"
MAP_PLACES = "places"
MAP_FLYING = "flying"
MAP_SLOW_CLAIMS = "slow_claims"
MAPS = (MAP_EVENTS, MAP_LOST_EVENTS, MAP_STACKS, MAP_PROBE_IDS, MAP_FLIGHTS, MAP_RECORDER_COUNTS,
        MAP_PLACES, MAP_FLYING, MAP_SLOW_CLAIMS)

# where skbtracer.c takes the translated filter expression, which defines
# pcap_match(view) for each of pcapfilter.VIEWS; skbtracer.c calls them
PCAP_FUNCTIONS_MARKER = "/* @pcap-functions@ skbtracer.py puts the translated expression here */"


def pcap_match(view):
    return "pcap_match_%s" % view
