"""--why: the IPv4 routing decision a row carries (skbtracer.c on_fib_lookup,
take_route): the table the deciding lookup searched, its result, the next
hop's gateway and device, in words for the row, the story and JSON, and
back from JSON for -r.

The decision is tied to the packet, not read from it: fib:fib_table_lookup
and fib6:fib6_table_lookup have no skb, so the newest lookup on the row's
CPU with the packet's addresses (and ports, where the lookup has them)
within SAME_CHAIN_NS before the row is taken as the packet's. README.md
("Routing decisions") says how far that holds. IPv6's lookups tell the
route's prefix; IPv4's do not (a fib_info is shared by prefixes).
"""

import errno
import glob
import socket

# the kernel's fixed tables (include/uapi/linux/rtnetlink.h); others named by rt_tables
RT_TABLES = {253: "default", 254: "main", 255: "local"}
RT_TABLES_FILES = ("/etc/iproute2/rt_tables", "/usr/share/iproute2/rt_tables",
                   "/usr/lib/iproute2/rt_tables")
RT_TABLES_DIRS = ("/etc/iproute2/rt_tables.d", "/usr/share/iproute2/rt_tables.d")
AF_INET, AF_INET6 = 2, 10
# route_known's bits (skbtracer.c ROUTE_KNOWN, ROUTE_HAS_PREFIX, ROUTE_REVERSE):
# REVERSE on an IP_RPFILTER drop row: the decision is rp_filter's lookup of the
# way back to the packet's source, not the packet's own
KNOWN, HAS_PREFIX, REVERSE = 1, 2, 4

# a route's type (include/uapi/linux/rtnetlink.h RTN_*), read from its fib_info
RTN_NAMES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
             6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
# where the type was not read (error routes have no next hop, nexthop objects
# no fib_info behind theirs): fib_table_lookup's err says the result
# (fib_props[type].error; -EAGAIN: no route in that table, nor in those before)
ERR_RESULTS = {0: "unicast", -errno.EINVAL: "blackhole", -errno.EHOSTUNREACH: "unreachable",
               -errno.EACCES: "prohibit", -errno.EAGAIN: "no route"}


def _read_table_names(paths):
    names = {}
    for path in paths:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[0].isdigit():
                names.setdefault(int(words[0]), words[1])
    return names


_table_names = None


def table_names():
    """table id -> name: the kernel's own, then iproute2's rt_tables files
    (the first file that names an id wins)."""
    global _table_names
    if _table_names is None:
        extra = sorted(p for d in RT_TABLES_DIRS for p in glob.glob(d + "/*.conf"))
        names = _read_table_names(RT_TABLES_FILES + tuple(extra))
        names.update(RT_TABLES)
        _table_names = names
    return _table_names


def table_name(table_id):
    """'main', 'local', 'default', a name from rt_tables, else the number ('100')."""
    return table_names().get(table_id, str(table_id))


def result(err, rtn):
    """unicast/local/broadcast/blackhole/unreachable/prohibit/no route...,
    or 'error N'."""
    if rtn in RTN_NAMES:
        return RTN_NAMES[rtn]
    return ERR_RESULTS.get(err, "error %d" % err)


def gateway(e):
    """The next hop's gateway as text, or None (a directly connected route)."""
    if e.route_gw_family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, e.route_gw[:4])
    if e.route_gw_family == AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, e.route_gw[:16])
    return None


def prefix(e):
    """The route's prefix as text ('fd00:244:2::/64'), or None (IPv4's
    lookups do not tell it)."""
    if not e.route_known & HAS_PREFIX:
        return None
    family = socket.AF_INET6 if e.family == 6 else socket.AF_INET
    size = 16 if family == socket.AF_INET6 else 4
    return "%s/%d" % (socket.inet_ntop(family, bytes(e.route_prefix[:size])), e.route_prefix_len)


def decision_words(table, outcome, gw, dev, dst=None):
    """The story's words of a decision: 'routed by table main via
    10.244.1.1 dev eth0', 'routed by table main fd00:244:2::/64 dev eth0'
    (dst: the route's prefix, where known), 'local route in table local',
    'blackhole route in table main', 'no route in table main' (the last
    table searched)."""
    at = " %s" % dst if dst else ""
    if outcome == "unicast":
        return "routed by table %s%s%s%s" % (table, at, " via %s" % gw if gw else "",
                                             " dev %s" % dev if dev else "")
    if outcome in RTN_NAMES.values():       # local, broadcast, blackhole, prohibit...
        return "%s route%s in table %s" % (outcome, at, table)
    return "%s in table %s" % (outcome, table)      # no route, error N


def json_object(e):
    """A row's "route" (only on rows that took a decision)."""
    outcome = result(e.route_err, e.route_type)
    gw = gateway(e)
    dev = e.route_dev or None
    return {"table": table_name(e.route_table), "table_id": e.route_table,
            "result": outcome, "err": e.route_err, "gateway": gw, "dev": dev,
            "oif": e.route_oif or None, "iif": e.route_iif or None,
            "rtn": e.route_type or None, "prefix": prefix(e),
            "reverse": bool(e.route_known & REVERSE), "text": words(e)}


def words(e):
    """decision_words of a row's decision; rp_filter's: 'rp_filter: the way
    back to 10.244.1.77 is routed by table main dev cni0, not veth1'."""
    text = decision_words(table_name(e.route_table), result(e.route_err, e.route_type),
                          gateway(e), e.route_dev, prefix(e))
    if e.route_known & REVERSE:
        return "rp_filter: the way back to %s is %s%s" % (
            e.saddr, text, ", not %s" % e.ifname if e.ifname and e.ifname != e.route_dev else "")
    return text


def row_suffix(e):
    """What TRACE_INFO ends in on a row that took a decision:
    ' route=main:unicast via=10.244.1.1 dev=eth0', ' route=100:prohibit',
    ' route=main:no_route', ' route=main:unicast dst=fd00:244:2::/64 dev=eth0'."""
    outcome = result(e.route_err, e.route_type).replace(" ", "_")   # one word: no_route
    text = " %s=%s:%s" % ("rpf_route" if e.route_known & REVERSE else "route",
                          table_name(e.route_table), outcome)
    if e.route_known & HAS_PREFIX:
        text += " dst=" + prefix(e)
    gw = gateway(e)
    if gw:
        text += " via=" + gw
    if e.route_dev:
        text += " dev=" + e.route_dev
    return text


ZERO = {"route_known": 0, "route_table": 0, "route_err": 0, "route_oif": 0, "route_iif": 0,
        "route_type": 0, "route_gw_family": 0, "route_dev": "", "route_gw": bytes(16),
        "route_prefix_len": 0, "route_prefix": bytes(16)}


def fields_of(obj):
    """The event's route_* fields from a saved "route" (json_object's inverse)."""
    if not obj:
        return dict(ZERO)
    gw, family = bytes(16), 0
    if obj.get("gateway"):
        family = AF_INET6 if ":" in obj["gateway"] else AF_INET
        packed = socket.inet_pton(socket.AF_INET6 if family == AF_INET6 else socket.AF_INET,
                                  obj["gateway"])
        gw = packed + bytes(16 - len(packed))
    known, plen, dst = KNOWN | (REVERSE if obj.get("reverse") else 0), 0, bytes(16)
    if obj.get("prefix"):
        text, plen = obj["prefix"].rsplit("/", 1)
        packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        known, plen, dst = known | HAS_PREFIX, int(plen), packed + bytes(16 - len(packed))
    return {"route_known": known, "route_table": obj.get("table_id") or 0,
            "route_err": obj.get("err") or 0, "route_oif": obj.get("oif") or 0,
            "route_iif": obj.get("iif") or 0, "route_type": obj.get("rtn") or 0,
            "route_gw_family": family, "route_dev": obj.get("dev") or "", "route_gw": gw,
            "route_prefix_len": plen, "route_prefix": dst}
