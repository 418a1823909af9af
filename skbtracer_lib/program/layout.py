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
# all of them (tests/unit/test_macros.py checks skbtracer.c against these)
FIELD_TABLES = (CORE_FIELDS, PCAP_VLAN_FIELDS, PCAP_VLAN_PRESENT, NF_STATE_FIELDS, XT_FIELDS,
                NFT_FIELDS)


class Layouts:
    """The source of struct layouts and the #defines that carry them."""

    def __init__(self, source):
        self.source = source          # "btf" or "headers"
        self.defines = {}
        self.description = ""
        if source == "headers":
            self.defines[macros.SKBT_LAYOUT_HEADERS] = 1
            self.description = "the installed kernel headers"
            return
        self.btf = kernel.btf()
        self.description = "BTF (/sys/kernel/btf)"
        self._add_fields(CORE_FIELDS, None)
        self._add_fields(NF_STATE_FIELDS, None)
        self._add_span(SPAN_FIELDS)

    def _add_span(self, fields):
        """One read for fields that lie close together (SPAN_FIELD in C)."""
        start = min(self.defines[macros.layout_offset(f)] for f in fields)
        end = max(self.defines[macros.layout_offset(f)] + self.defines[macros.layout_size(f)]
                  for f in fields)
        if end - start > MAX_SPAN:
            return False
        self.defines[macros.L_SKB_SPAN_OFF] = start
        self.defines[macros.L_SKB_SPAN_LEN] = end - start
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
        if macros.L_SKB_SPAN_LEN in self.defines and self._add_span(SPAN_FIELDS + ("SKB_TAIL",)):
            self.defines[macros.L_SKB_SPAN_HAS_TAIL] = 1
        self._add_fields(PCAP_VLAN_FIELDS, None)
        try:
            self._add_fields(PCAP_VLAN_PRESENT, None)
        except BTFError:
            pass        # 6.2+: a tag is present when vlan_all != 0
        return []

    def netfilter(self, module, is_nft):
        """Can the netfilter probes of module be built? (ok, reason)"""
        if is_nft:
            fields, flag = NFT_FIELDS, macros.HAVE_NFT_LAYOUT
        else:
            fields, flag = XT_FIELDS, macros.HAVE_XT_LAYOUT
        if self.source == "btf":
            try:
                self._add_fields(fields, module)
            except BTFError as e:
                return False, "no layout in BTF: %s" % e
        self.defines[flag] = 1
        return True, ""


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
