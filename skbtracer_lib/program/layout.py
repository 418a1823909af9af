"""Struct layouts for skbtracer.c: L_<NAME>_OFF/_SIZE (and _SHIFT/_BITS for
bitfields), read from the running kernel's BTF. Without BTF the C program
computes the same macros from the installed headers (SKBT_LAYOUT_HEADERS)."""

from . import kernel, macros
from .btf import BTFError

# field -> (struct, member path) of every field skbtracer.c reads, which it
# gets as L_<field>_OFF/_SIZE (macros.layout_offset, ...)
CORE_FIELDS = {
    "SKB_LEN": ("sk_buff", "len"),
    "SKB_DEV": ("sk_buff", "dev"),
    "SKB_SK": ("sk_buff", "sk"),
    "SKB_HEAD": ("sk_buff", "head"),
    "SKB_DATA": ("sk_buff", "data"),
    "SKB_TAIL": ("sk_buff", "tail"),          # -w, expressions: the end of the linear data
    "SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "SKB_MAC_HEADER": ("sk_buff", "mac_header"),
    "SKB_PROTOCOL": ("sk_buff", "protocol"),
    "SKB_PKT_TYPE": ("sk_buff", "pkt_type"),
    "DEV_NAME": ("net_device", "name"),
    "DEV_IFINDEX": ("net_device", "ifindex"),
    "DEV_NET": ("net_device", "nd_net.net"),
    "NET_INUM": ("net", "ns.inum"),
    "SK_NET": ("sock", "__sk_common.skc_net.net"),
}
# read together when they lie within MAX_SPAN bytes of each other
SPAN_FIELDS = ("SKB_PROTOCOL", "SKB_NETWORK_HEADER", "SKB_MAC_HEADER", "SKB_HEAD", "SKB_DATA")
MAX_SPAN = 64
# -H/-P/--proto matching the connection (CT_MATCH): _nfct in the same read where the
# span stays within this (6.18: 104 bytes); a packet without an entry then costs no more
MAX_SPAN_WITH_NFCT = 128
# a filter expression (pcap_filter): the offloaded VLAN tag tcpdump shows
PCAP_VLAN_FIELDS = {
    "SKB_VLAN_PROTO": ("sk_buff", "vlan_proto"),
    "SKB_VLAN_TCI": ("sk_buff", "vlan_tci"),
}
PCAP_VLAN_PRESENT = {"SKB_VLAN_PRESENT": ("sk_buff", "vlan_present")}   # before 6.2
NF_STATE_FIELDS = {
    "STATE_HOOK": ("nf_hook_state", "hook"),
    "STATE_PF": ("nf_hook_state", "pf"),
}
XT_FIELDS = {
    "XT_TABLE_NAME": ("xt_table", "name"),
}
NFT_FIELDS = {
    "NFT_PKT_SKB": ("nft_pktinfo", "skb"),
    "NFT_PKT_STATE": ("nft_pktinfo", "state"),
    "NFT_CHAIN_TABLE": ("nft_chain", "table"),
    "NFT_CHAIN_NAME": ("nft_chain", "name"),
    "NFT_TABLE_NAME": ("nft_table", "name"),
}
# conntrack on every event (read_ct): the skb's entry (vmlinux), then struct
# nf_conn, which lives in the nf_conntrack module where conntrack is one
CT_SKB_FIELDS = {"SKB_NFCT": ("sk_buff", "_nfct")}
CT_CONN_FIELDS = {
    "CT_STATUS": ("nf_conn", "status"),
    "CT_TUPLEHASH": ("nf_conn", "tuplehash"),                 # [2]: original, reply
    "CT_HASH_TUPLE": ("nf_conntrack_tuple_hash", "tuple"),
    "TUPLE_SRC_ADDR": ("nf_conntrack_tuple", "src.u3"),
    "TUPLE_SRC_PORT": ("nf_conntrack_tuple", "src.u.all"),    # ICMP: the echo id
    "TUPLE_DST_ADDR": ("nf_conntrack_tuple", "dst.u3"),
    "TUPLE_DST_PORT": ("nf_conntrack_tuple", "dst.u.all"),
    "TUPLE_L4PROTO": ("nf_conntrack_tuple", "dst.protonum"),
}
CT_MARK_FIELDS = {"CT_MARK": ("nf_conn", "mark")}             # CONFIG_NF_CONNTRACK_MARK
CT_ZONE_FIELDS = {"CT_ZONE": ("nf_conn", "zone.id")}          # CONFIG_NF_CONNTRACK_ZONES
# --why: the routing decision (skbtracer.c on_fib_lookup): fib:fib_table_lookup's
# flow and next hop, and the type of the route it belongs to
FIB_FIELDS = {
    "FLOW4_IIF": ("flowi4", "__fl_common.flowic_iif"),
    "FLOW4_PROTO": ("flowi4", "__fl_common.flowic_proto"),
    "FLOW4_SADDR": ("flowi4", "saddr"),
    "FLOW4_DADDR": ("flowi4", "daddr"),
    "FLOW4_SPORT": ("flowi4", "uli.ports.sport"),
    "FLOW4_DPORT": ("flowi4", "uli.ports.dport"),
    "NH_PARENT": ("fib_nh", "nh_parent"),       # the route's struct fib_info
    "FIB_TYPE": ("fib_info", "fib_type"),       # RTN_*
}
# the next hop's fields, both families (struct fib6_nh starts with its fib_nh_common)
NHC_FIELDS = {
    "NHC_DEV": ("fib_nh_common", "nhc_dev"),
    "NHC_OIF": ("fib_nh_common", "nhc_oif"),
    "NHC_GW_FAMILY": ("fib_nh_common", "nhc_gw_family"),
    "NHC_GW": ("fib_nh_common", "nhc_gw"),
}
# IPv6 (skbtracer.c on_fib6_lookup): fib6:fib6_table_lookup's flow, result,
# table, the route's prefix, and the namespace's null entry (no route)
FIB6_FIELDS = {
    "FLOW6_IIF": ("flowi6", "__fl_common.flowic_iif"),
    "FLOW6_PROTO": ("flowi6", "__fl_common.flowic_proto"),
    "FLOW6_SADDR": ("flowi6", "saddr"),
    "FLOW6_DADDR": ("flowi6", "daddr"),
    "FLOW6_SPORT": ("flowi6", "uli.ports.sport"),
    "FLOW6_DPORT": ("flowi6", "uli.ports.dport"),
    "RES6_NH": ("fib6_result", "nh"),
    "RES6_F6I": ("fib6_result", "f6i"),
    "RES6_TYPE": ("fib6_result", "fib6_type"),
    "TABLE6_ID": ("fib6_table", "tb6_id"),
    "F6I_DST": ("fib6_info", "fib6_dst.addr"),
    "F6I_PLEN": ("fib6_info", "fib6_dst.plen"),
    "NET_FIB6_NULL": ("net", "ipv6.fib6_null_entry"),
}
# --why: a packet queued for its neighbour (skbtracer.c why_neigh, neigh_take)
NEIGH_FIELDS = {
    "NEIGH_STATE": ("neighbour", "nud_state"),
    "NEIGH_QUEUE": ("neighbour", "arp_queue"),
    "NEIGH_QUEUE_TAIL": ("neighbour", "arp_queue.prev"),
    "NEIGH_TBL": ("neighbour", "tbl"),
    "NEIGH_KEY": ("neighbour", "primary_key"),
    "NEIGH_TBL_FAMILY": ("neigh_table", "family"),
}
# --iptable with kube-proxy's IPVS: the scheduler's choice (skbtracer.c
# on_ipvs_schedule_return), from the ip_vs module's BTF
IPVS_FIELDS = {
    "IPVS_CONN_DPORT": ("ip_vs_conn", "dport"),
    "IPVS_CONN_DADDR": ("ip_vs_conn", "daddr"),
    "IPVS_CONN_FLAGS": ("ip_vs_conn", "flags"),
    "IPVS_CONN_DAF": ("ip_vs_conn", "daf"),
    "IPVS_SVC_SCHED": ("ip_vs_service", "scheduler"),
    "IPVS_SCHED_NAME": ("ip_vs_scheduler", "name"),
}
CT_MODULE = "nf_conntrack"
CT_SPAN_MAX = 256       # skbtracer.c's _Static_assert: the nf_conn bytes read at once
# all of them (tests/unit/test_macros.py checks skbtracer.c against these)
FIELD_TABLES = (CORE_FIELDS, PCAP_VLAN_FIELDS, PCAP_VLAN_PRESENT, NF_STATE_FIELDS, XT_FIELDS,
                NFT_FIELDS, CT_SKB_FIELDS, CT_CONN_FIELDS, CT_MARK_FIELDS, CT_ZONE_FIELDS,
                FIB_FIELDS, NHC_FIELDS, FIB6_FIELDS, NEIGH_FIELDS, IPVS_FIELDS)


class Layouts:
    """The source of struct layouts and the #defines that carry them."""

    def __init__(self, source):
        self.source = source          # "btf" or "headers"
        self.defines = {}
        self.description = ""
        # conntrack: what the events can carry, and why not more (-v)
        self.ct_entry = self.ct_conn = False
        self.ct_notes = []
        self.ct_unreadable = {}       # "mark"/"zone" -> why read_ct cannot read it (BTF)
        self.span_fields = ()       # the sk_buff fields find_packet reads at once
        if source == "headers":
            self.defines[macros.SKBT_LAYOUT_HEADERS] = 1
            self.description = "the installed kernel headers"
            # the C takes them from the headers where CONFIG_NF_CONNTRACK is set
            self.ct_entry = self.ct_conn = True
            return
        self.btf = kernel.btf()
        self.description = "BTF (/sys/kernel/btf)"
        self._add_fields(CORE_FIELDS, None)
        self._add_fields(NF_STATE_FIELDS, None)
        self._widen_span(SPAN_FIELDS, MAX_SPAN)
        self._add_conntrack()

    def _add_conntrack(self):
        """The skb's conntrack entry (sk_buff._nfct, vmlinux) and struct
        nf_conn (nf_conntrack's BTF, or vmlinux's where it is built in);
        whatever cannot be had is left out, and ct_notes say why."""
        try:
            self._add_fields(CT_SKB_FIELDS, None)
        except BTFError as e:
            self._ct_missing("conntrack: none on the events (%s: a kernel without "
                             "conntrack)" % e, "mark", "zone")
            return
        self.defines[macros.HAVE_CT_NFCT] = 1
        self.ct_entry = True
        try:
            self._add_fields(CT_CONN_FIELDS, CT_MODULE)
        except BTFError as e:
            self._ct_missing("conntrack: state only, no tuples, status, mark or zone: %s (%s)"
                             % (e, self._conn_btf_problem()), "mark", "zone")
            return
        conn = dict(CT_CONN_FIELDS)
        for optional, what, config in ((CT_MARK_FIELDS, "mark", "CONFIG_NF_CONNTRACK_MARK"),
                                       (CT_ZONE_FIELDS, "zone", "CONFIG_NF_CONNTRACK_ZONES")):
            try:
                self._add_fields(optional, CT_MODULE)
                conn.update(optional)
            except BTFError:
                self._ct_missing("conntrack: no %s in struct nf_conn (%s is off)"
                                 % (next(iter(optional.values()))[1], config), what)
        span = self._conn_span(conn)
        if span > CT_SPAN_MAX:
            self._ct_missing("conntrack: state only: struct nf_conn's fields span %d bytes, "
                             "more than the %d read at once" % (span, CT_SPAN_MAX), "mark", "zone")
            return
        self.defines[macros.HAVE_CT_CONN] = 1
        if "CT_MARK" in conn:
            self.defines[macros.HAVE_CT_MARK] = 1
        if "CT_ZONE" in conn:
            self.defines[macros.HAVE_CT_ZONE] = 1
        self.ct_conn = True

    def _ct_missing(self, note, *unreadable):
        """A conntrack field the events cannot carry: note for -v, and the
        reason --ct-mark/--ct-zone give for refusing to start."""
        self.ct_notes.append(note)
        for what in unreadable:
            self.ct_unreadable.setdefault(what, note)

    def ct_summary(self):
        """What the events carry of conntrack, for -v."""
        if self.source == "headers":
            return ("state and struct nf_conn's fields, where the headers' "
                    "CONFIG_NF_CONNTRACK is set")
        if not self.ct_entry:
            return "nothing"
        if not self.ct_conn:
            return "the state and id only (skb->_nfct)"
        extra = [name for name, macro in (("mark", macros.HAVE_CT_MARK),
                                          ("zone", macros.HAVE_CT_ZONE)) if macro in self.defines]
        return "state, id, status and tuples%s (struct nf_conn from BTF)" % (
            "".join(", " + name for name in extra))

    def _conn_span(self, conn):
        """Bytes of struct nf_conn read_ct reads at once (CT_SPAN_LEN in C)."""
        fields = [f for f, (struct_name, _path) in conn.items() if struct_name == "nf_conn"]
        start = min(self.defines[macros.layout_offset(f)] for f in fields)
        end = max(self.defines[macros.layout_offset(f)] + self.defines[macros.layout_size(f)]
                  for f in fields)
        return end - start

    def _conn_btf_problem(self):
        """Why struct nf_conn is not in BTF, as far as one can tell."""
        import os
        if not os.path.isdir("/sys/module/%s" % CT_MODULE):
            return "the %s module is not loaded (nothing uses conntrack yet)" % CT_MODULE
        return "this kernel has no BTF for the %s module" % CT_MODULE

    def _widen_span(self, fields, limit):
        """One read for fields that lie close together (SPAN_FIELD in C): the
        span's fields and these, when they lie within limit bytes."""
        if self.span_fields == () and fields != SPAN_FIELDS:
            return False        # no span to widen: the fields are read one by one
        wanted = self.span_fields + tuple(f for f in fields if f not in self.span_fields)
        start = min(self.defines[macros.layout_offset(f)] for f in wanted)
        end = max(self.defines[macros.layout_offset(f)] + self.defines[macros.layout_size(f)]
                  for f in wanted)
        if end - start > limit:
            return False
        self.span_fields = wanted
        self.defines[macros.L_SKB_SPAN_OFF] = start
        self.defines[macros.L_SKB_SPAN_LEN] = end - start
        return True

    def conn_match(self):
        """-H/-P/--proto may match the connection's original tuple: can they
        (the struct nf_conn layout is known)? sk_buff._nfct joins
        find_packet's read where it lies close enough."""
        if not self.ct_conn:
            return False
        if self.source == "btf" and self._widen_span(("SKB_NFCT",), MAX_SPAN_WITH_NFCT):
            self.defines[macros.L_SKB_SPAN_HAS_NFCT] = 1
        return True

    def _add_fields(self, fields, module):
        found = {}
        for name, (struct_name, path) in fields.items():
            member = self.btf.member(struct_name, path, module)
            found[macros.layout_offset(name)] = member.byte_offset
            found[macros.layout_size(name)] = member.size
            if member.bit_size:
                found[macros.layout_shift(name)] = member.bit_shift
                found[macros.layout_bits(name)] = member.bit_size
        self.defines.update(found)

    def pcap(self):
        """Fields the filter expression needs beyond the core ones; the
        headers fallback has no VLAN tag. Returns notes for -v."""
        if self.source != "btf":
            return ["struct layouts from headers: offloaded VLAN tags are not shown to the "
                    "filter expression"]
        self._add_fields(PCAP_VLAN_FIELDS, None)
        vlan = tuple(PCAP_VLAN_FIELDS)
        try:
            self._add_fields(PCAP_VLAN_PRESENT, None)
            vlan += tuple(PCAP_VLAN_PRESENT)
        except BTFError:
            pass        # 6.2+: a tag is present when vlan_all != 0
        if self._widen_span(("SKB_TAIL",), MAX_SPAN):
            self.defines[macros.L_SKB_SPAN_HAS_TAIL] = 1
            # the offloaded tag in the same read, where it lies close enough
            if self._widen_span(vlan, MAX_SPAN):
                self.defines[macros.L_SKB_SPAN_HAS_VLAN] = 1
        return []

    def fib(self):
        """Can the IPv4 routing decision be read (struct flowi4, fib_nh)? (ok, reason)"""
        return self._optional(FIB_FIELDS, NHC_FIELDS)

    def fib6(self):
        """Can the IPv6 routing decision be read (struct flowi6, fib6_result)? (ok, reason)"""
        return self._optional(FIB6_FIELDS, NHC_FIELDS)

    def neigh(self):
        """Can a packet's neighbour be read (struct neighbour)? (ok, reason)"""
        return self._optional(NEIGH_FIELDS)

    def _optional(self, *tables, module=None):
        """Add the fields of tables (module's BTF, else vmlinux's) where BTF
        has them all: (ok, reason)."""
        if self.source == "btf":
            try:
                for table in tables:
                    self._add_fields(table, module)
            except BTFError as e:
                return False, "no layout in BTF: %s" % e
        return True, ""

    def ipvs(self, module):
        """Can IPVS's choice be read (struct ip_vs_conn, ip_vs_service)? (ok, reason)"""
        if self.source != "btf":
            return False, "struct ip_vs_conn's layout is read from BTF only"
        if module and self.btf.module(module) is None:
            return False, "this kernel has no BTF for the %s module (5.10 and older)" % module
        return self._optional(IPVS_FIELDS, module=module)

    def netfilter(self, module, is_nft):
        """Can the netfilter probes of module be built? (ok, reason)"""
        if is_nft:
            fields, flag = NFT_FIELDS, macros.HAVE_NFT_LAYOUT
        else:
            fields, flag = XT_FIELDS, macros.HAVE_XT_LAYOUT
        ok, why = self._optional(fields, module=module)
        if ok:
            self.defines[flag] = 1
        return ok, why


def choose(requested):
    """Layouts for --layout auto|btf|headers."""
    have_btf = kernel.btf() is not None
    if requested == "btf" and not have_btf:
        raise kernel.KernelError("--layout btf: this kernel has no BTF (/sys/kernel/btf/vmlinux)")
    if requested == "headers" or not have_btf:
        return Layouts("headers")
    try:
        return Layouts("btf")
    except BTFError as e:
        raise kernel.KernelError("cannot read struct layouts from BTF: %s" % e) from None


def header_tree_problem(layouts, headers, forced):
    """Layouts from installed headers that are not this kernel's (headers:
    kernel.find_header_tree()): a KernelError unless forced (--layout
    headers), then the warning to say; None when there is nothing to say."""
    if layouts.source != "headers" or headers.own:
        return None
    problem = "struct layouts from %s would not match this kernel" % headers.description
    if not forced:          # no BTF: refuse to read garbage
        raise kernel.KernelError("%s; install linux-headers-%s" % (problem, kernel.release()))
    return "--layout headers: %s" % problem
