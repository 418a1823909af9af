"""--iptable with kube-proxy's IPVS mode: the scheduler's choice for a new
connection (skbtracer.c on_ipvs_schedule_return), on the row of the packet
that asked for it: the virtual service (the packet's destination, not yet
rewritten), the scheduler, the real server and how IPVS forwards to it. In
words for the row, the story and JSON, and back from JSON for -r."""

import socket

from .vocabulary import L4_NAMES

# ipvs_known (skbtracer.c IPVS_CHOSE, IPVS_NO_DEST)
CHOSE, NO_DEST = 1, 2
# the connection's forwarding method: flags & IP_VS_CONN_F_FWD_MASK
# (include/uapi/linux/ip_vs.h); kube-proxy uses masquerade only
FORWARDING = {0: "masq", 1: "local", 2: "tunnel", 3: "droute", 4: "bypass"}
AF_INET, AF_INET6 = 2, 10


def real_server(e):
    """'10.244.1.3:5353', '[fd00::3]:53', or None (no choice on the row)."""
    if e.ipvs_known != CHOSE:
        return None
    if e.ipvs_daf == AF_INET6:
        return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, e.ipvs_raddr[:16]), e.ipvs_rport)
    return "%s:%d" % (socket.inet_ntop(socket.AF_INET, e.ipvs_raddr[:4]), e.ipvs_rport)


def forwarding(e):
    return FORWARDING.get(e.ipvs_fwd, "fwd_%d" % e.ipvs_fwd) if e.ipvs_known == CHOSE else None


def row_suffix(e):
    """What TRACE_INFO ends in on a row with IPVS's choice:
    ' ipvs=rr:masq->10.244.1.3:5353', ' ipvs=rr:no_real_server'."""
    sched = e.ipvs_sched or "?"
    if e.ipvs_known != CHOSE:
        return " ipvs=%s:no_real_server" % sched
    return " ipvs=%s:%s->%s" % (sched, forwarding(e), real_server(e))


def words(e, virtual):
    """The story's words: 'IPVS 10.96.0.10:53/udp rr -> 10.244.1.3:5353
    (masq)', 'IPVS 10.96.0.10:53/udp rr: no real server'; virtual: the
    packet's destination as text."""
    service = "IPVS %s/%s %s" % (virtual, L4_NAMES.get(e.l4proto, str(e.l4proto)),
                                 e.ipvs_sched or "?")
    if e.ipvs_known != CHOSE:
        return service + ": no real server"
    return "%s -> %s (%s)" % (service, real_server(e), forwarding(e))


def json_object(e):
    """A row's "ipvs" (only on rows with IPVS's choice)."""
    return {"scheduler": e.ipvs_sched or None, "real_server": real_server(e),
            "forwarding": forwarding(e)}


ZERO = {"ipvs_known": 0, "ipvs_raddr": bytes(16), "ipvs_rport": 0, "ipvs_fwd": 0,
        "ipvs_daf": 0, "ipvs_sched": ""}


def fields_of(obj):
    """The event's ipvs_* fields from a saved "ipvs" (json_object's inverse)."""
    if not obj:
        return dict(ZERO)
    fields = dict(ZERO, ipvs_known=NO_DEST, ipvs_sched=obj.get("scheduler") or "")
    server = obj.get("real_server")
    if server:
        host, port = server.rsplit(":", 1)
        if host.startswith("["):
            packed, family = socket.inet_pton(socket.AF_INET6, host[1:-1]), AF_INET6
        else:
            packed, family = socket.inet_pton(socket.AF_INET, host), AF_INET
        method = {name: code for code, name in FORWARDING.items()}.get(obj.get("forwarding"), 0)
        fields.update(ipvs_known=CHOSE, ipvs_raddr=packed.ljust(16, b"\0"), ipvs_rport=int(port),
                      ipvs_daf=family, ipvs_fwd=method)
    return fields
