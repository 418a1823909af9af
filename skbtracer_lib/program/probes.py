"""Which kernel functions and tracepoints skbtracer attaches to, and where
the skb is among their arguments on the running kernel."""

import functools
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from . import kernel, macros, tp_btf
from ..events import conntrack

# --route with kprobes: the original tool's set plus what newer kernels need
# to tell the same story. The number is the skb's argument position when the
# kernel has no BTF to say (positions as on 4.4+ / 6.1).
ROUTE_FUNCTIONS = [
    ("netif_rx", 1),
    ("__netif_receive_skb", 1),
    ("napi_gro_receive", 2),
    ("tpacket_rcv", 1),
    ("packet_rcv", 1),
    ("__dev_queue_xmit", 1),
    ("br_handle_frame", 1),            # struct sk_buff **pskb
    ("br_handle_frame_finish", 3),
    ("br_nf_pre_routing", 2),
    ("br_nf_pre_routing_finish", 3),
    ("br_nf_pre_routing_finish_bridge", 3),
    ("br_pass_frame_up", 1),
    ("br_netif_receive_skb", 3),
    ("br_forward", 2),
    ("deliver_clone", 2),              # inlined on 6.1: see skb_clone
    ("skb_clone", 1),
    ("__br_forward", 2),
    ("br_forward_finish", 3),
    ("br_nf_forward_ip", 2),
    ("br_nf_forward_finish", 3),
    ("br_nf_post_routing", 2),
    ("br_nf_dev_queue_xmit", 3),
    ("br_dev_xmit", 1),
    ("ip_rcv", 1),
    ("ip_rcv_finish", 3),
    ("ip_forward", 1),
    ("ip_output", 3),
    ("ip_finish_output", 3),
    ("ip_local_deliver", 1),
    ("udp_rcv", 1),
    ("__udp_enqueue_schedule_skb", 2),  # queued to a UDP socket
    ("tcp_v4_rcv", 1),
    ("icmp_rcv", 1),
    ("ipv6_rcv", 1),
    ("ip6_rcv_finish", 3),
    ("ip6_forward", 1),
    ("ip6_output", 3),
    ("ip6_finish_output", 3),
]

# --route without kprobes (and, for delivery to a socket, with them):
# (category, event, index of the skb in the raw tracepoint's args)
ROUTE_TRACEPOINTS = [
    ("net", "netif_rx", 0),
    ("net", "napi_gro_receive_entry", 0),
    ("net", "netif_receive_skb", 0),
    ("net", "net_dev_queue", 0),
    ("net", "net_dev_start_xmit", 0),
]
DELIVERY_TRACEPOINT = ("skb", "skb_copy_datagram_iovec", 0)

# --iptable: legacy x_tables and nf_tables
XT_FUNCTIONS = ["ipt_do_table", "ip6t_do_table"]
NFT_FUNCTION = "nft_do_chain"
# --iptable with kube-proxy's IPVS mode: the scheduler's choice for a new
# connection, ip_vs_schedule(svc, skb, ...) -> struct ip_vs_conn *
IPVS_SCHEDULE = "ip_vs_schedule"
IPVS_SKB_ARG, IPVS_SVC_ARG = 2, 1

# --drop: where conntrack decides its own drops (skbtracer.c CT_FAULTS)
CT_CONFIRM = "__nf_conntrack_confirm"
CT_ALLOC = "__nf_conntrack_alloc"
CT_HELPER_LOG = "nf_ct_helper_log"
CT_ALLOC_TUPLE_ARG = 3      # (net, zone, orig, repl, gfp, hash) since 4.x

# --why: what the stack sends back because of a packet. The tracepoints
# where the kernel has them (icmp:icmp_send: 6.1 on Debian, not 5.10; it
# tells no MTU); kprobes else, and for IPv6's ICMP errors (no tracepoint).
ICMP_SEND_TP = ("icmp", "icmp_send")
RESET_TP = ("tcp", "tcp_send_reset")
# (function, info in network byte order, the skb's position when no BTF says)
ICMP_FUNCTIONS = (("__icmp_send", 1, 1), ("icmp6_send", 0, 1))
RESET_FUNCTIONS = (("tcp_v4_send_reset", 2), ("tcp_v6_send_reset", 2))
# and the routing decision: each IPv4 table lookup, tied to the packet's next row
FIB_LOOKUP_TP = ("fib", "fib_table_lookup")
FIB6_LOOKUP_TP = ("fib6", "fib6_table_lookup")
# and a packet queued for its neighbour: its row, its drop's neighbour and wait
NEIGH_QUEUED_TP = ("neigh", "neigh_event_send_done")
NEIGH_DROP_REASONS = {"NEIGH_FAILED": macros.DROP_REASON_NEIGH_FAILED,
                      "NEIGH_QUEUEFULL": macros.DROP_REASON_NEIGH_QUEUEFULL,
                      "NEIGH_DEAD": macros.DROP_REASON_NEIGH_DEAD}


@dataclass
class Probe:
    id: int
    name: str                 # shown in TRACE_INFO
    kind: str                 # route / iptable / drop / helper
    c_line: str = ""          # the line instantiating its C functions
    attach: list = field(default_factory=list)   # (type, target, C function)
    module: str = ""          # kernel module the function lives in
    note: str = ""            # how the skb argument was found
    by_address: bool = False  # a shared program finds its id by the probe address
    addresses: list = field(default_factory=list)  # its kallsyms addresses, when known here
    extra: bool = False       # from --all/--func rather than the built-in set


class Unavailable(NamedTuple):
    """A mode the chosen backend cannot trace (the plan's answer, not a probe)."""
    mode: str                 # "iptable": the flag is --iptable
    reason: str
    without: str              # what the trace goes without ("no verdict rows")

    @property
    def flag(self):
        return "--" + self.mode


@dataclass
class ProbePlan:
    backend: str
    probes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (name, reason)
    defines: dict = field(default_factory=dict)  # extra #defines
    function_counts: tuple = None   # --all/--func: (found in BTF, to attach, skipped)
    notes: list = field(default_factory=list)
    unavailable: list = field(default_factory=list)  # [Unavailable] modes this backend lacks

    def add(self, name, kind, **kw):
        probe = Probe(len(self.probes), name, kind, **kw)
        self.probes.append(probe)
        return probe

    def skip(self, name, reason):
        self.skipped.append((name, reason))

    def name_of(self, probe_id):
        return self.probes[probe_id].name


def skb_argument(function, module, default):
    """(position, deref, how) of the sk_buff argument: from BTF when the
    kernel has it, else the built-in default."""
    btf = kernel.btf()
    if btf:
        params = btf.for_symbol(module).func_params(function)
        if params is not None:
            for position, (_name, type_id) in enumerate(params, 1):
                struct, depth = btf.for_symbol(module).pointee_struct(type_id)
                if struct == "sk_buff" and depth in (1, 2):
                    return position, depth == 2, "BTF"
            return None, False, "BTF: no sk_buff argument"
    return default, function == "br_handle_frame", "default position"


def known_symbols():
    """/proc/kallsyms entries of every function skbtracer may kprobe."""
    names = (tuple(f for f, _ in ROUTE_FUNCTIONS) + tuple(XT_FUNCTIONS) +
             (NFT_FUNCTION, IPVS_SCHEDULE, "skb_clone", CT_CONFIRM, CT_HELPER_LOG, CT_ALLOC) +
             tuple(f for f, _b, _p in ICMP_FUNCTIONS) + tuple(f for f, _p in RESET_FUNCTIONS))
    return kernel.symbols(names)


def _function_missing(function):
    """Why a function cannot be kprobed, or None when it can be tried.
    GCC's copies (name.isra.0) take other arguments: reported, not probed."""
    symbols = known_symbols()
    if function in symbols:
        return None
    copies = sorted(s for s in symbols if s.startswith(function + "."))
    if copies:
        return "only optimized copies exist (%s)" % ", ".join(copies[:3])
    return "not in /proc/kallsyms (inlined, or its module is not loaded)"


def symbol_module(function):
    return known_symbols()[function][0]


def symbol_addresses(function):
    return known_symbols().get(function, ("", []))[1]


def _plan_route_kprobes(plan):
    for function, default in ROUTE_FUNCTIONS:
        missing = _function_missing(function)
        if missing:
            plan.skip(function, missing)
            continue
        module = symbol_module(function)
        position, deref, how = skb_argument(function, module, default)
        if not position or position > 5:
            plan.skip(function, how)
            continue
        probe = plan.add(function, "route", module=module, note="skb is arg %d (%s)" % (position, how))
        instantiator = macros.ROUTE_KPROBE_DEREF if deref else macros.ROUTE_KPROBE
        probe.c_line = instantiator.line(position)
        (program,) = instantiator.function_names(position)
        probe.attach = [("kprobe", function, program)]
        probe.by_address = True


def _plan_unresolved(plan):
    # rows from an address skbtracer did not register (should not happen)
    unresolved = plan.add("?", "helper", note="kprobe rows whose function was not resolved")
    plan.defines[macros.UNRESOLVED_PROBE_ID] = unresolved.id


def _plan_functions(plan, cfg):
    """--all/--func: one kprobe per function, sharing the route programs."""
    from . import functions, kprobe_multi
    planned = {p.name for p in plan.probes} | {name for name, _r in plan.skipped}
    # the built-in tracepoints of the same name already tell these
    planned |= {"consume_skb", "kfree_skb", DELIVERY_TRACEPOINT[1]}
    selection = functions.select(cfg.functions, cfg.all_functions, exclude=planned)
    plan.function_counts = (selection.found, len(selection.functions), len(selection.skipped))
    for function in selection.functions:
        (program,) = macros.ROUTE_KPROBE.function_names(function.position)
        probe = plan.add(function.name, "route", module=function.module,
                         note="skb is arg %d (BTF)" % function.position,
                         c_line=macros.ROUTE_KPROBE.line(function.position),
                         attach=[("kprobe", function.name, program)],
                         by_address=True, extra=True,
                         addresses=functions.text_symbols()[function.name][1])
    plan.skipped.extend(selection.skipped)
    count = sum(len(p.addresses) or 1 for p in plan.probes if p.by_address)
    plan.defines[macros.PROBE_IDS_ENTRIES] = max(2048, 2 * count + 64)
    if kprobe_multi.supported():
        # bpf_get_func_ip: the shared programs serve kprobe-multi links
        plan.defines[macros.ROUTE_FUNC_IP] = 1


def _plan_route_tracepoints(plan, points):
    for category, event, index in points:
        probe = plan.add(event, "route", note="tracepoint %s:%s" % (category, event))
        probe.c_line = macros.ROUTE_RAW_TP.line(probe.id, index)
        (program,) = macros.ROUTE_RAW_TP.function_names(probe.id, index)
        probe.attach = [(tp_btf.RAW, event, program)]


def _xt_argument_positions(function, module):
    """(skb, state, table) positions of ipt_do_table: the order changed in 5.16."""
    btf = kernel.btf()
    params = btf.for_symbol(module).func_params(function) if btf else None
    if params:
        found = {}
        for position, (name, type_id) in enumerate(params, 1):
            struct, _depth = btf.for_symbol(module).pointee_struct(type_id)
            if struct == "sk_buff":
                found["skb"] = position
            elif struct == "nf_hook_state":
                found["state"] = position
            elif struct == "xt_table" or name in ("priv", "table"):
                found["table"] = position
        if len(found) == 3:
            return found["skb"], found["state"], found["table"], "BTF"
    if kernel.version() >= (5, 16):
        return 2, 3, 1, "5.16+ order"
    return 1, 2, 3, "pre-5.16 order"


def _plan_iptable(plan, layouts):
    for function in XT_FUNCTIONS + [NFT_FUNCTION]:
        missing = _function_missing(function)
        if missing:
            reason = missing
            if function == "ipt_do_table":
                reason += "; legacy iptables is not in use"
            plan.skip(function, reason)
            continue
        module = symbol_module(function)
        is_nft = function == NFT_FUNCTION
        layout_ok, why = layouts.netfilter(module, is_nft)
        if not layout_ok:
            plan.skip(function, why)
            continue
        probe = plan.add(function, "iptable", module=module)
        if is_nft:
            instantiator, args = macros.NFT_KPROBES, (probe.id,)
            probe.note = "pkt is arg 1, chain arg 2"
        else:
            skb, state, table, how = _xt_argument_positions(function, module)
            instantiator, args = macros.XT_KPROBES, (probe.id, skb, state, table)
            probe.note = "skb arg %d, state arg %d, table arg %d (%s)" % (skb, state, table, how)
        probe.c_line = instantiator.line(*args)
        enter, ret = instantiator.function_names(*args)
        probe.attach = [("kprobe", function, enter), ("kretprobe", function, ret)]


def _plan_ipvs(plan, layouts):
    """--iptable: IPVS's choice of real server (skbtracer.c IPVS_DECISIONS),
    where the ip_vs module is loaded (kube-proxy's IPVS mode loads it)."""
    missing = _function_missing(IPVS_SCHEDULE)
    if missing:
        plan.notes.append("--iptable: no IPVS decisions: %s %s" % (IPVS_SCHEDULE, missing))
        return
    module = symbol_module(IPVS_SCHEDULE)
    position, _deref, how = skb_argument(IPVS_SCHEDULE, module, IPVS_SKB_ARG)
    if position != IPVS_SKB_ARG:
        plan.skip(IPVS_SCHEDULE, "skb is arg %s, not %d (%s)" % (position, IPVS_SKB_ARG, how))
        return
    ok, why = layouts.ipvs(module)
    if not ok:
        plan.skip(IPVS_SCHEDULE, why)
        return
    probe = plan.add(IPVS_SCHEDULE, "ipvs", module=module,
                     note="the real server chosen for a new connection: svc arg %d, skb arg "
                          "%d (%s), the connection returned" % (IPVS_SVC_ARG, position, how),
                     attach=[("kprobe", IPVS_SCHEDULE, macros.ON_IPVS_SCHEDULE),
                             ("kretprobe", IPVS_SCHEDULE, macros.ON_IPVS_SCHEDULE_RETURN)])
    plan.defines[macros.IPVS_DECISIONS] = 1
    plan.defines[macros.IPVS_PROBE_ID] = probe.id


def _plan_ct_faults(plan, layouts):
    """--drop: name the drops conntrack decides (skbtracer.c CT_FAULTS): a
    lost insert race where __nf_conntrack_confirm can be probed, a helper's
    drop where nf_ct_helper_log can be, a full table where
    __nf_conntrack_alloc can be and its tuple read."""
    missing = _function_missing(CT_CONFIRM)
    if missing:
        plan.notes.append("conntrack's own drops are not named: %s %s" % (CT_CONFIRM, missing))
        return
    plan.defines[macros.CT_FAULTS] = 1
    plan.defines[macros.CT_FAULT_INSERT] = conntrack.FAULT_INSERT
    plan.add(CT_CONFIRM, "helper", module=symbol_module(CT_CONFIRM),
             note="a lost insert race: NF_DROP returned",
             attach=[("kprobe", CT_CONFIRM, macros.ON_CT_CONFIRM),
                     ("kretprobe", CT_CONFIRM, macros.ON_CT_CONFIRM_RETURN)])
    missing = _function_missing(CT_HELPER_LOG)
    if missing:
        plan.notes.append("a conntrack helper's drop is not named: %s %s" % (CT_HELPER_LOG, missing))
    else:
        plan.defines[macros.CT_FAULT_HELPER] = conntrack.FAULT_HELPER
        plan.add(CT_HELPER_LOG, "helper", module=symbol_module(CT_HELPER_LOG),
                 note="a helper's drop: what helpers call before NF_DROP",
                 attach=[("kprobe", CT_HELPER_LOG, macros.ON_CT_HELPER_LOG)])
    missing = _function_missing(CT_ALLOC)
    if missing or not layouts.ct_conn:
        plan.notes.append("a full conntrack table is not named: %s" % (
            "%s %s" % (CT_ALLOC, missing) if missing else "; ".join(layouts.ct_notes)))
        return
    position, _deref, how = tuple_argument(CT_ALLOC, symbol_module(CT_ALLOC))
    if position != CT_ALLOC_TUPLE_ARG:
        plan.notes.append("a full conntrack table is not named: %s's tuple is argument %s (%s)"
                          % (CT_ALLOC, position, how))
        return
    plan.defines[macros.CT_FAULT_TABLE_FULL] = conntrack.FAULT_TABLE_FULL
    plan.add(CT_ALLOC, "helper", module=symbol_module(CT_ALLOC),
             note="a full table: an error returned, tied to the drop by tuple and CPU",
             attach=[("kprobe", CT_ALLOC, macros.ON_CT_ALLOC),
                     ("kretprobe", CT_ALLOC, macros.ON_CT_ALLOC_RETURN)])


def tracepoint_params(category, event):
    """The raw tracepoint's arguments' count (BTF's btf_trace_<event>, else
    the format file's fields), or None where the kernel has no such tracepoint."""
    btf = kernel.btf()
    params = btf.vmlinux.typedef_func_params("btf_trace_" + event) if btf else None
    if params:
        return len(params) - 1          # the first is the tracepoint's data
    fmt = kernel.tracepoint_format(category, event)
    if fmt is None:
        return None
    return 2 + ("reason;" in fmt) if event == RESET_TP[1] else 3


def _plan_why_kprobe(plan, function, skb_default, instantiator, *args):
    """A --why kprobe on function (its skb first among args' places): the
    probe, or None (said in -v's skipped list)."""
    missing = _function_missing(function)
    if missing:
        plan.skip(function, missing)
        return None
    module = symbol_module(function)
    position, _deref, how = skb_argument(function, module, skb_default)
    if position != skb_default:
        plan.skip(function, "skb is arg %s, not %d (%s)" % (position, skb_default, how))
        return None
    probe = plan.add(function, "why", module=module, note="skb is arg %d (%s)" % (position, how))
    line_args = (probe.id,) + args
    probe.c_line = instantiator.line(*line_args)
    (program,) = instantiator.function_names(*line_args)
    probe.attach = [("kprobe", function, program)]
    return probe


def _plan_why_tracepoint(plan, event, instantiator, note):
    probe = plan.add(event, "why", note=note)
    probe.c_line = instantiator.line(probe.id)
    (program,) = instantiator.function_names(probe.id)
    probe.attach = [(tp_btf.RAW, event, program)]


def _plan_route_decisions(plan, layouts, backend):
    """--why: the routing decision on the packet's rows (skbtracer.c
    on_fib_lookup, on_fib6_lookup, take_route), from the same tracepoints
    on both backends. With kprobes, an ICMP error's row is made at
    __icmp_send's (icmp6_send's) entry, before the lookups ICMP makes for
    it: a kretprobe ends them (on_icmp_sent), and those to the packet's own
    destination meanwhile are not taken as the packet's (icmp_own_lookup)."""
    for (category, event), macro, layout, c_function, family in (
            (FIB_LOOKUP_TP, macros.ROUTE_DECISIONS, layouts.fib, macros.ON_FIB_LOOKUP, "IPv4"),
            (FIB6_LOOKUP_TP, macros.ROUTE6_DECISIONS, layouts.fib6, macros.ON_FIB6_LOOKUP,
             "IPv6")):
        if tracepoint_params(category, event) is None:
            plan.notes.append("--why: no %s routing decisions: this kernel has no %s:%s "
                              "tracepoint" % (family, category, event))
            continue
        ok, why = layout()
        if not ok:
            plan.notes.append("--why: no %s routing decisions: %s" % (family, why))
            continue
        plan.defines[macro] = 1
        rpfilter = drop_reasons().get_value("IP_RPFILTER")
        if macro == macros.ROUTE_DECISIONS and rpfilter is not None:
            plan.defines[macros.DROP_REASON_RPFILTER] = rpfilter
        plan.add(event, "helper",
                 note="tracepoint %s:%s: %s route lookups, tied to the packet's next row on "
                      "the same CPU" % (category, event, family),
                 attach=[(tp_btf.RAW, event, c_function)])
    if backend == "kprobe" and (macros.ROUTE_DECISIONS in plan.defines or
                                macros.ROUTE6_DECISIONS in plan.defines):
        senders = {function for function, _info, _skb in ICMP_FUNCTIONS}
        for probe in plan.probes:
            if probe.kind == "why" and probe.name in senders:
                probe.attach.append(("kretprobe", probe.name, macros.ON_ICMP_SENT))
                probe.note += "; its return ends ICMP's own route lookups"


def _plan_neighbours(plan, layouts, cfg):
    """--why: a packet queued for ARP/ND resolution as a row (skbtracer.c
    why_neigh), and on its drop row the neighbour, its state and the wait
    (neigh_take); the same tracepoint on both backends."""
    if tracepoint_params(*NEIGH_QUEUED_TP) is None:
        plan.notes.append("--why: no neighbour waits: this kernel has no %s:%s tracepoint"
                          % NEIGH_QUEUED_TP)
        return
    ok, why = layouts.neigh()
    if not ok:
        plan.notes.append("--why: no neighbour waits: %s" % why)
        return
    plan.defines[macros.NEIGH_WAITS] = 1
    for name, macro in NEIGH_DROP_REASONS.items():
        value = drop_reasons().get_value(name)
        if value is not None:
            plan.defines[macro] = value
    _plan_why_tracepoint(plan, NEIGH_QUEUED_TP[1], macros.WHY_NEIGH_TP,
                         "tracepoint neigh:neigh_event_send_done: the skb it queued "
                         "(the neighbour's queue's tail)")
    if "drop" not in cfg.modes:
        plan.notes.append("--why without --drop: packets queued for their neighbour are "
                          "told, not how their wait ended")


def _plan_why(plan, backend):
    """--why: rows for the ICMP errors and TCP resets the stack sends
    because of a packet, on the packet that caused them."""
    if tracepoint_params(*ICMP_SEND_TP) is not None:
        _plan_why_tracepoint(plan, ICMP_SEND_TP[1], macros.WHY_ICMP_TP,
                             "tracepoint icmp:icmp_send: IPv4 errors, no MTU")
    elif backend == "kprobe":
        function, info_be, skb_default = ICMP_FUNCTIONS[0]
        _plan_why_kprobe(plan, function, skb_default, macros.WHY_ICMP_KPROBE, info_be)
    else:
        plan.notes.append("--why: no ICMP error rows: this kernel has no icmp:icmp_send "
                          "tracepoint and no kprobes")
    if backend == "kprobe":
        function, info_be, skb_default = ICMP_FUNCTIONS[1]
        _plan_why_kprobe(plan, function, skb_default, macros.WHY_ICMP_KPROBE, info_be)
    else:
        plan.notes.append("--why: no ICMPv6 error rows: there is no tracepoint for them "
                          "(icmp6_send needs kprobes)")
    # the tracepoint fires for resets without a socket (a SYN to a closed
    # port) since the kernels whose tcp_send_reset has a reason (6.10)
    params = tracepoint_params(*RESET_TP)
    if params is not None and (params >= 3 or backend != "kprobe"):
        _plan_why_tracepoint(plan, RESET_TP[1], macros.WHY_RESET_TP,
                             "tracepoint tcp:tcp_send_reset")
        if params < 3:
            plan.notes.append("--why: resets without a socket (a SYN to a closed port) are "
                              "not seen: this kernel's tcp:tcp_send_reset has no reason "
                              "argument, it fires for a socket's own resets only")
    elif backend == "kprobe":
        for function, skb_default in RESET_FUNCTIONS:
            _plan_why_kprobe(plan, function, skb_default, macros.WHY_RESET_KPROBE, skb_default)
    else:
        plan.notes.append("--why: no TCP reset rows: this kernel has no tcp:tcp_send_reset "
                          "tracepoint and no kprobes")


def tuple_argument(function, module):
    """(position, deref, how) of the struct nf_conntrack_tuple argument named
    orig: from BTF when the kernel has it, else the built-in position."""
    btf = kernel.btf()
    params = btf.for_symbol(module).func_params(function) if btf else None
    if params is None:
        return CT_ALLOC_TUPLE_ARG, False, "default position"
    for position, (name, type_id) in enumerate(params, 1):
        struct, depth = btf.for_symbol(module).pointee_struct(type_id)
        if struct == "nf_conntrack_tuple" and name == "orig":
            return position, False, "BTF"
    return None, False, "BTF: no orig tuple argument"


def drop_reason_arg():
    """Index of the reason in skb:kfree_skb's raw tracepoint args, or None
    on kernels before 5.17 that have no reason."""
    btf = kernel.btf()
    params = btf.vmlinux.typedef_func_params("btf_trace_kfree_skb") if btf else None
    if params:
        # (void *__data, struct sk_buff *skb, void *location, enum skb_drop_reason ...)
        for index, (_name, type_id) in enumerate(params):
            if btf.vmlinux.type_name(type_id) == "skb_drop_reason":
                return index - 1
        return None
    fmt = kernel.tracepoint_format("skb", "kfree_skb")
    if fmt and "enum skb_drop_reason reason" in fmt:
        return 2
    return None


def plan_probes(cfg, backend, layouts):
    """The probe points for cfg's modes on this kernel."""
    plan = ProbePlan(backend)
    chosen = cfg.all_functions or cfg.functions
    if chosen and backend != "kprobe":
        raise kernel.KernelError("--all/--func need kprobes, and this kernel has none "
                                 "(its tracepoints cannot probe functions)")
    # --func names the functions: the built-in route set only without it
    builtin_route = "route" in cfg.modes and not cfg.functions
    if builtin_route:
        if backend == "kprobe":
            _plan_route_kprobes(plan)
            _plan_route_tracepoints(plan, [DELIVERY_TRACEPOINT])
        else:
            _plan_route_tracepoints(plan, ROUTE_TRACEPOINTS + [DELIVERY_TRACEPOINT])
    if "why" in cfg.modes:
        _plan_why(plan, backend)        # before --all, which leaves out what is planned
        _plan_route_decisions(plan, layouts, backend)
        _plan_neighbours(plan, layouts, cfg)
    if chosen:
        _plan_functions(plan, cfg)
    if backend == "kprobe" and (builtin_route or chosen):
        _plan_unresolved(plan)
    if "iptable" in cfg.modes:
        if backend == "kprobe":
            _plan_iptable(plan, layouts)
            _plan_ipvs(plan, layouts)
        else:
            plan.unavailable.append(Unavailable(
                "iptable", "netfilter verdict rows need kprobes (ipt_do_table, nft_do_chain); "
                "this kernel has no kprobes", "no verdict rows"))
    if "drop" in cfg.modes or cfg.keep:
        drop = plan.add("kfree_skb", "drop" if "drop" in cfg.modes else "helper",
                        c_line="", attach=[(tp_btf.RAW, "kfree_skb", macros.ON_KFREE_SKB)])
        plan.defines[macros.DROP_PROBE_ID] = drop.id
        reason_arg = drop_reason_arg()
        if reason_arg is not None:
            plan.defines[macros.DROP_REASON_ARG] = reason_arg
            consumed = drop_reasons().get_value("SKB_CONSUMED")
            if consumed is not None:
                plan.defines[macros.DROP_REASON_CONSUMED] = consumed
            drop.note = "reason is arg %d" % reason_arg
        else:
            drop.note = "this kernel's kfree_skb has no reason"
    if "drop" in cfg.modes and backend == "kprobe":
        _plan_ct_faults(plan, layouts)

    if builtin_route or cfg.keep:
        consume = plan.add("consume_skb", "route" if "route" in cfg.modes else "helper",
                           attach=[(tp_btf.RAW, "consume_skb", macros.ON_CONSUME_SKB)],
                           note="a normal free: the end of an skb's life")
        if builtin_route:
            plan.defines[macros.CONSUME_PROBE_ID] = consume.id
    if cfg.keep:
        if backend == "kprobe":
            plan.add("skb_clone", "helper",
                     attach=[("kprobe", "skb_clone", macros.ON_CLONE_ENTER),
                             ("kretprobe", "skb_clone", macros.ON_CLONE_RETURN)])
        else:
            plan.notes.append("--keep cannot follow skb clones without kprobes")
    return plan


class DropReasons:
    """Drop reason numbers -> names, read from the running kernel."""

    PREFIX = "SKB_DROP_REASON_"

    def __init__(self, names, source):
        self.names = names
        self.source = source
        self._by_name = {v: k for k, v in names.items()}

    def name(self, value):
        return self.names.get(value, str(value))

    def get_value(self, name):
        return self._by_name.get(name)


@functools.lru_cache(maxsize=1)
def drop_reasons():
    """From BTF's enum skb_drop_reason, else the kfree_skb format file's
    __print_symbolic table; never from a table of our own."""
    btf = kernel.btf()
    values = btf.vmlinux.enum_values("skb_drop_reason") if btf else None
    if values:
        names = {value: name[len(DropReasons.PREFIX):] if name.startswith(DropReasons.PREFIX)
                 else name for value, name in values.items()}
        return DropReasons(names, "BTF enum skb_drop_reason")
    fmt = kernel.tracepoint_format("skb", "kfree_skb") or ""
    names = {int(value): name for value, name in
             re.findall(r'\{\s*(\d+),\s*"([A-Z0-9_]+)"\s*\}', fmt)}
    return DropReasons(names, "the kfree_skb format file" if names else "nowhere")
