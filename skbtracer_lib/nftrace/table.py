"""skbtracer's own trace table: `inet skbtracer_trace`, base chains at the
earliest priority of prerouting and output whose rules set `meta nftrace
set 1` on the packets the tracer's -H/-P/--proto keep. Every later chain
of the packet (forward, input, postrouting, other tables, iptables-nft's)
is traced once the bit is set: it stays on the skb.

Owned by the netlink socket that made it (NFT_TABLE_F_OWNER, `flags owner`,
kernel 5.12+): it goes when that socket closes, kill -9 included. On a
kernel without owner tables it is removed at exit, and a table a killed run
left is removed at the next start (said in one line)."""

import ipaddress

FAMILY, NAME = "inet", "skbtracer_trace"
HOOKS = ("prerouting", "output")
PRIORITY = -2147483648          # NF_IP_PRI_FIRST: before raw, conntrack and NAT
L4 = {"tcp": "tcp", "udp": "udp", "icmp": "{ icmp, ipv6-icmp }"}


class TableError(Exception):
    pass


def matches(addr=None, proto="any", port=None):
    """The rules' match parts for the filters (validated values only: an
    ipaddress address, a protocol name of L4, an int port): one string per
    rule, the rules ORed. "" matches every packet."""
    addresses = [""]
    if addr is not None:
        addr = ipaddress.ip_address(addr)
        keyword = "ip" if addr.version == 4 else "ip6"
        addresses = ["%s saddr %s" % (keyword, addr), "%s daddr %s" % (keyword, addr)]
    protocol = "" if proto == "any" else "meta l4proto %s" % L4[proto]
    ports = [""]
    if port is not None:
        port = int(port)
        if not 0 <= port <= 65535:
            raise ValueError("port %d" % port)
        protocol = protocol or "meta l4proto { tcp, udp, sctp }"
        ports = ["th sport %d" % port, "th dport %d" % port]
    return [" ".join(p for p in (a, protocol, q) if p) for a in addresses for q in ports]


def commands(rule_matches, owner=True):
    """The nft commands that make the table."""
    lines = ["add table %s %s {%s }" % (FAMILY, NAME, " flags owner;" if owner else "")]
    for hook in HOOKS:
        lines.append("add chain %s %s %s { type filter hook %s priority %d; policy accept; }"
                     % (FAMILY, NAME, hook, hook, PRIORITY, ))
        for match in rule_matches:
            lines.append(" ".join(w for w in ("add rule", FAMILY, NAME, hook, match,
                                              "meta nftrace set 1") if w))
    return lines


def existing(nft):
    """None (no table), "owned" (a live run's) or "stale" (left behind)."""
    nft.set_json_output(False)
    rc, out, _err = nft.cmd("list table %s %s" % (FAMILY, NAME))
    if rc != 0:
        return None
    return "owned" if "flags owner" in out else "stale"


def install(nft, rule_matches):
    """Make the table; (owner flag used, a stale table was removed)."""
    found = existing(nft)
    if found == "owned":
        raise TableError("table %s %s exists and belongs to a running skbtracer --nftrace "
                         "(one per namespace)" % (FAMILY, NAME))
    removed_stale = found == "stale"
    if removed_stale:
        remove(nft)
    for owner in (True, False):     # a kernel before 5.12 refuses the flag
        rc, _out, err = nft.cmd("\n".join(commands(rule_matches, owner)))
        if rc == 0:
            return owner, removed_stale
    raise TableError("cannot add table %s %s: %s" % (
        FAMILY, NAME, (err.strip().splitlines() or ["nft failed"])[0]))


def remove(nft):
    nft.cmd("delete table %s %s" % (FAMILY, NAME))
