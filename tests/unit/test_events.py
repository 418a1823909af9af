"""Decoding raw perf events (decode.py) and formatting rows (output.py)."""

import os
import struct
import time

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)
from event_struct import members

from skbtracer_lib.events import decode, textrow
from skbtracer_lib.events.decode import KIND_DROP, KIND_IPTABLE, KIND_ROUTE, Event, encode
from skbtracer_lib.program import probes

# The formats of the original tool, written out here on purpose.
HEADER_FMT = "%-10s %-12s %-12s %-12s %-40s %s"
ROW_FMT = "[%-8s][%-10s] %-12s %-12s %-40s %s"

PROBE_NAMES = ["ip_rcv", "__dev_queue_xmit", "ipt_do_table", "kfree_skb"]
REASONS = probes.DropReasons({0: "NOT_DROPPED_YET", 2: "NOT_SPECIFIED",
                              77: "NETFILTER_DROP"}, "test")
LOCATION = 0xFFFFFFFF81A2B3C4


def symbolize(address):
    return {LOCATION: "nf_hook_slow+0x1a"}[address]


class FixedClock:
    """A clock column that does not depend on time."""

    def column(self, ts_ns):
        return "12:34:56"


def formatter(clock=None, reasons=REASONS):
    return textrow.RowFormatter(PROBE_NAMES, reasons, symbolize, clock or FixedClock())


def row_of(raw, **kw):
    return formatter(**kw).row(Event(raw))


def columns(row):
    """Split a row into (time, netns, ifname, mac, pkt_info, trace_info)."""
    assert row.startswith("[")
    time_col, rest = row[1:].split("][", 1)
    netns, rest = rest.split("] ", 1)
    ifname, mac, tail = rest[:12], rest[13:25], rest[26:]
    assert rest[12] == rest[25] == " "
    pkt, trace = tail.split(" ", 1)              # PKT_INFO has no spaces
    if len(pkt) < 40:
        assert trace.startswith(" " * (40 - len(pkt)))   # padded to %-40s
        assert trace[40 - len(pkt)] != " "
    trace = trace[max(0, 40 - len(pkt)):]
    return time_col.strip(), netns.strip(), ifname.strip(), mac.strip(), pkt.strip(), trace


# --- the C layout, read from struct event_t in skbtracer.c (event_struct) ----

C_MEMBERS, C_SIZE = members(open(os.path.join(str(skbt_unit_helpers.REPO), "skbtracer.c")).read())
AT = {m.name: m.offset for m in C_MEMBERS}
SIZE = {m.name: m.size for m in C_MEMBERS}


def hand_packed(**f):
    """The event as the kernel writes it, field by field at the offsets of
    struct event_t; 16/32-bit header fields are packet bytes (big-endian)."""
    b = bytearray(C_SIZE)

    def number(name, code, default=0):
        struct.pack_into(code, b, AT[name], f.get(name, default))

    def array(name):
        b[AT[name]:AT[name] + SIZE[name]] = f.get(name, b"").ljust(SIZE[name], b"\0")

    for name in ("ts_ns", "skb", "location"):
        number(name, "<Q")
    for name in ("netns", "ifindex", "pid", "drop_reason", "verdict", "len"):
        number(name, "<I")
    number("stack_id", "<i", -1)
    number("tcp_seq", ">I")                                   # network order
    number("probe", "<H")
    for name in ("ip_id", "sport", "dport", "icmp_id"):       # network order
        number(name, ">H")
    number("kind", "B", KIND_ROUTE)
    number("family", "B", 4)
    for name in ("pkt_type", "l4proto", "tcp_flags", "icmp_type", "ttl", "pf", "hook"):
        number(name, "B")
    for name in ("ifname", "dmac", "smac", "saddr", "daddr", "table", "chain"):
        array(name)
    return bytes(b)


def test_event_size():
    assert decode.EVENT.size == decode.EVENT_SIZE == C_SIZE


def test_hand_packed_tcp_event_decodes():
    raw = hand_packed(ts_ns=123456789, skb=0xFFFF888012345600, netns=4026531840, ifindex=3,
                      pid=4242, tcp_seq=0x01020304, len=1500, probe=0, ip_id=0xBEEF,
                      sport=80, dport=1234, kind=KIND_ROUTE, pkt_type=0, family=4,
                      l4proto=6, tcp_flags=0x18, ttl=63, ifname=b"eth0",
                      dmac=bytes.fromhex("0242ac110002"), smac=bytes.fromhex("0242ac110003"),
                      saddr=bytes([1, 2, 3, 4]), daddr=bytes([5, 6, 7, 8]))
    e = Event(raw)
    assert (e.ts_ns, e.skb, e.netns, e.ifindex, e.pid) == (
        123456789, 0xFFFF888012345600, 4026531840, 3, 4242)
    assert e.tcp_seq == 0x01020304
    assert e.ip_id == 0xBEEF and e.sport == 80 and e.dport == 1234
    assert e.len == 1500 and e.ttl == 63 and e.stack_id == -1
    assert e.family == 4 and e.l4proto == 6 and e.tcp_flags == 0x18
    assert e.ifname == "eth0"
    assert e.saddr == "1.2.3.4" and e.daddr == "5.6.7.8"
    assert e.dmac == bytes.fromhex("0242ac110002")
    row = row_of(raw)
    assert row == ROW_FMT % ("12:34:56", "4026531840", "eth0", "0242ac110002",
                             "T_ACK,PSH:1.2.3.4:80->5.6.7.8:1234",
                             "ffff888012345600.0:ip_rcv")
    # the same event through encode() gives the same bytes
    assert encode(ts_ns=123456789, skb=0xFFFF888012345600, netns=4026531840, ifindex=3,
                  pid=4242, tcp_seq=0x01020304, len=1500, probe=0, ip_id=0xBEEF,
                  sport=80, dport=1234, kind=KIND_ROUTE, family=4, l4proto=6,
                  tcp_flags=0x18, ttl=63, ifname="eth0", dmac="0242ac110002",
                  smac="0242ac110003", saddr="1.2.3.4", daddr="5.6.7.8") == raw


def test_hand_packed_ipv6_netfilter_event():
    saddr = bytes.fromhex("fd000000000000000000000000000001")
    daddr = bytes.fromhex("fd000000000000000000000000000abc")
    raw = hand_packed(skb=0xABC, kind=KIND_IPTABLE, family=6, l4proto=17, sport=5353,
                      dport=53, pf=10, hook=3, verdict=(113 << 16) | 0, probe=2,
                      table=b"filter", chain=b"OUTPUT", saddr=saddr, daddr=daddr,
                      ifname=b"veth-very-long0", pkt_type=4, netns=7)
    e = Event(raw)
    assert e.saddr == "fd00::1" and e.daddr == "fd00::abc"
    assert e.table == "filter" and e.chain == "OUTPUT"
    assert e.verdict == 0
    assert row_of(raw) == ROW_FMT % ("12:34:56", "7", "veth-very-long0", "000000000000",
                                     "U:fd00::1:5353->fd00::abc:53",
                                     "abc.4:10.filter.OUTPUT.DROP")


# --- PKT_INFO of every protocol ------------------------------------------------

@pytest.mark.parametrize("flags, text", [
    (0x10 | 0x08, "ACK,PSH"),
    (0x02, "SYN"),
    (0x12, "ACK,SYN"),
    (0x11, "ACK,FIN"),
    (0x04, "RST"),
    (0xFF, "CWR,ECE,URG,ACK,PSH,RST,SYN,FIN"),
    (0xC2, "CWR,ECE,SYN"),
    (0x20, "URG"),
    (0x00, ""),
], ids=["ack-psh", "syn", "syn-ack", "fin-ack", "rst", "all", "ecn-syn", "urg", "none"])
def test_tcp_flags(flags, text):
    raw = encode(l4proto=6, tcp_flags=flags, saddr="1.2.3.4", sport=80, daddr="5.6.7.8",
                 dport=1234)
    assert columns(row_of(raw))[4] == "T_%s:1.2.3.4:80->5.6.7.8:1234" % text
    assert textrow.TCP_FLAGS[flags] == text


def test_tcp_example_exact():
    raw = encode(l4proto=6, tcp_flags=0x18, saddr="1.2.3.4", sport=80, daddr="5.6.7.8",
                 dport=1234)
    assert textrow.pkt_info(Event(raw)) == "T_ACK,PSH:1.2.3.4:80->5.6.7.8:1234"


def test_udp():
    raw = encode(l4proto=17, saddr="10.244.0.3", sport=40000, daddr="10.96.0.10", dport=53)
    assert textrow.pkt_info(Event(raw)) == "U:10.244.0.3:40000->10.96.0.10:53"


@pytest.mark.parametrize("family, saddr, daddr, icmp_type, text", [
    (4, "10.0.0.1", "10.0.0.2", 8, "I_request:10.0.0.1->10.0.0.2"),
    (4, "10.0.0.2", "10.0.0.1", 0, "I_reply:10.0.0.2->10.0.0.1"),
    (4, "10.0.0.254", "10.0.0.1", 3, "I:10.0.0.254->10.0.0.1"),       # unreachable
    (4, "10.0.0.254", "10.0.0.1", 11, "I:10.0.0.254->10.0.0.1"),      # time exceeded
    (6, "fd00::1", "fd00::2", 128, "I_request:fd00::1->fd00::2"),
    (6, "fd00::2", "fd00::1", 129, "I_reply:fd00::2->fd00::1"),
    (6, "fe80::1", "ff02::1", 134, "I:fe80::1->ff02::1"),              # router advert
    (6, "fd00::2", "fd00::1", 8, "I:fd00::2->fd00::1"),                # not v4 echo types
], ids=["v4-request", "v4-reply", "v4-unreach", "v4-ttl", "v6-request", "v6-reply",
        "v6-ra", "v6-type8"])
def test_icmp(family, saddr, daddr, icmp_type, text):
    raw = encode(family=family, l4proto=1 if family == 4 else 58, icmp_type=icmp_type,
                 icmp_id=22, saddr=saddr, daddr=daddr)
    e = Event(raw)
    assert e.is_icmp
    assert e.icmp_id == 22
    assert textrow.pkt_info(e) == text


def test_icmpv4_number_in_ipv6_is_not_icmp():
    e = Event(encode(family=6, l4proto=1, saddr="fd00::1", daddr="fd00::2"))
    assert not e.is_icmp
    assert textrow.pkt_info(e) == "1:fd00::1->fd00::2"


@pytest.mark.parametrize("saddr, daddr, text", [
    ("2001:0db8:0000:0000:0000:0000:0000:0001", "fd00:0:0:0:0:0:0:2", "2001:db8::1->fd00::2"),
    ("::1", "::", "::1->::"),
    ("fe80::a:0:0:1", "2001:db8:0:1::", "fe80::a:0:0:1->2001:db8:0:1::"),
    ("::ffff:10.0.0.1", "::ffff:10.0.0.2", "::ffff:10.0.0.1->::ffff:10.0.0.2"),
])
def test_ipv6_addresses_are_compressed(saddr, daddr, text):
    e = Event(encode(family=6, l4proto=17, saddr=saddr, daddr=daddr, sport=1, dport=2))
    src, dst = text.split("->")
    assert (e.saddr, e.daddr) == (src, dst)
    assert textrow.pkt_info(e) == "U:%s:1->%s:2" % (src, dst)


@pytest.mark.parametrize("proto, family, saddr, daddr", [
    (47, 4, "10.1.1.1", "10.2.2.2"),     # GRE
    (50, 4, "10.1.1.1", "10.2.2.2"),     # ESP
    (132, 6, "fd00::1", "fd00::2"),      # SCTP
    (0, 6, "fd00::1", "fd00::2"),        # hop-by-hop options
])
def test_other_protocol(proto, family, saddr, daddr):
    e = Event(encode(family=family, l4proto=proto, saddr=saddr, daddr=daddr))
    assert textrow.pkt_info(e) == "%d:%s->%s" % (proto, saddr, daddr)


# --- TRACE_INFO of every row kind --------------------------------------------

def test_route_row():
    raw = encode(kind=KIND_ROUTE, probe=1, skb=0xFFFF8881DEADBEEF, pkt_type=4)
    assert columns(row_of(raw))[5] == "ffff8881deadbeef.4:__dev_queue_xmit"


@pytest.mark.parametrize("pf, hook, verdict, table, text", [
    (2, 0, 1, "nat", "2.nat.PREROUTING.ACCEPT"),
    (2, 1, 0, "filter", "2.filter.INPUT.DROP"),
    (2, 2, 1, "filter", "2.filter.FORWARD.ACCEPT"),
    (2, 3, 2, "mangle", "2.mangle.OUTPUT.STOLEN"),
    (2, 4, 1, "nat", "2.nat.POSTROUTING.ACCEPT"),
    (10, 1, 3, "filter", "10.filter.INPUT.QUEUE"),
    (2, 5, 1, "filter", "2.filter.INGRESS.ACCEPT"),                   # inet ingress chain
    (7, 0, 1, "filter", "7.filter.PREROUTING.ACCEPT"),
    (7, 2, 0, "filter", "7.filter.FORWARD.DROP"),
    (7, 5, 1, "broute", "7.broute.BROUTING.ACCEPT"),
    (2, 1, (1 << 16) | 0, "filter", "2.filter.INPUT.DROP"),          # NF_DROP_ERR(-EPERM)
    (2, 1, (113 << 16) | 0, "filter", "2.filter.INPUT.DROP"),        # NF_DROP_ERR(-EHOSTUNREACH)
    (2, 1, 0xFFFF0000 | 3, "filter", "2.filter.INPUT.QUEUE"),       # NF_QUEUE_NR(65535)
    (2, 0, 1, "", "2.?.PREROUTING.ACCEPT"),                           # no table name
    (2, 9, 1, "raw", "2.raw.9.ACCEPT"),                               # unknown hook
], ids=["nat-prerouting", "filter-input-drop", "forward", "stolen", "postrouting", "ipv6-queue",
        "inet-ingress", "bridge-prerouting", "bridge-forward-drop", "bridge-brouting",
        "drop-err-eperm", "drop-err-ehostunreach", "queue-num", "no-table", "unknown-hook"])
def test_netfilter_row(pf, hook, verdict, table, text):
    raw = encode(kind=KIND_IPTABLE, probe=2, skb=0xFFFF888100001234, pkt_type=0, pf=pf,
                 hook=hook, verdict=verdict, table=table, l4proto=17, saddr="10.0.0.1",
                 daddr="10.0.0.2", sport=1, dport=2)
    assert columns(row_of(raw))[5] == "ffff888100001234.0:" + text




@pytest.mark.parametrize("hook, name", [(0, "INGRESS"), (1, "EGRESS")], ids=["ingress", "egress"])
def test_netdev_hook_names(hook, name):
    raw = encode(kind=KIND_IPTABLE, probe=2, skb=0x1, pf=5, hook=hook, verdict=1,
                 table="t", l4proto=17)
    assert columns(row_of(raw))[5] == "1.0:5.t.%s.ACCEPT" % name


def test_drop_row():
    raw = encode(kind=KIND_DROP, probe=3, skb=0xFFFF888100005678, pkt_type=0,
                 drop_reason=77, location=LOCATION, l4proto=6, tcp_flags=0x02,
                 saddr="10.0.0.1", sport=33333, daddr="10.96.0.10", dport=80, netns=4026532000,
                 ifname="cni0", dmac="aabbccddeeff")
    row = row_of(raw)
    assert row == ROW_FMT % ("12:34:56", "4026532000", "cni0", "aabbccddeeff",
                             "T_SYN:10.0.0.1:33333->10.96.0.10:80",
                             "ffff888100005678.0:kfree_skb reason=NETFILTER_DROP "
                             "location=nf_hook_slow+0x1a")


def test_drop_row_unknown_reason_and_no_location():
    raw = encode(kind=KIND_DROP, probe=3, skb=0x1, drop_reason=999, location=0)
    assert columns(row_of(raw))[5] == "1.0:kfree_skb reason=999"


def test_drop_row_without_reason_names():
    raw = encode(kind=KIND_DROP, probe=3, skb=0x1, drop_reason=2, location=LOCATION)
    for reasons in (None, probes.DropReasons({}, "nowhere")):
        assert columns(row_of(raw, reasons=reasons))[5] == "1.0:kfree_skb location=nf_hook_slow+0x1a"


def test_drop_reason_lookup():
    assert REASONS.name(77) == "NETFILTER_DROP"
    assert REASONS.name(5) == "5"
    assert REASONS.get_value("NOT_SPECIFIED") == 2
    assert REASONS.get_value("NOPE") is None


# --- columns ------------------------------------------------------------------

def test_header_exact():
    assert textrow.HEADER == HEADER_FMT % ("time", "NETWORK_NS", "INTERFACE", "DEST_MAC",
                                          "PKT_INFO", "TRACE_INFO")
    assert textrow.HEADER_FORMAT == HEADER_FMT
    assert textrow.ROW_FORMAT == ROW_FMT


def test_row_widths_and_padding():
    raw = encode(l4proto=17, saddr="1.1.1.1", daddr="2.2.2.2", sport=1, dport=2, netns=1,
                 ifname="lo", dmac="000000000001", probe=0, skb=0x10)
    row = row_of(raw)
    assert row == "[12:34:56][1         ] lo           000000000001 " \
                  "U:1.1.1.1:1->2.2.2.2:2                   10.0:ip_rcv"
    pkt = "U:1.1.1.1:1->2.2.2.2:2"
    assert row.index("10.0:ip_rcv") == 1 + 8 + 2 + 10 + 2 + 13 + 13 + 41
    assert row[row.index(pkt) + len(pkt):].startswith(" " * (41 - len(pkt)))


def test_long_values_are_not_cut():
    long_v6 = "2001:db8:1111:2222:3333:4444:5555:6666"
    raw = encode(family=6, l4proto=17, saddr=long_v6, daddr=long_v6, sport=65535, dport=65535,
                 netns=4026531840, ifname="a-very-long-if", probe=0, skb=0x10)
    pkt = "U:%s:65535->%s:65535" % (long_v6, long_v6)
    assert len(pkt) > 40
    assert row_of(raw) == "[12:34:56][4026531840] a-very-long-if 000000000000 %s 10.0:ip_rcv" % pkt


def test_mac_is_12_hex_chars():
    raw = encode(dmac="0242AC11000A", smac="ffffffffffff", l4proto=17)
    e = Event(raw)
    assert e.dmac.hex() == "0242ac11000a"
    mac = columns(row_of(raw))[3]
    assert mac == "0242ac11000a"
    assert len(mac) == 12 and all(c in "0123456789abcdef" for c in mac)


def test_ifname_nul_terminated_and_full_length():
    assert Event(encode(ifname="eth0")).ifname == "eth0"
    full = hand_packed(ifname=b"abcdefghijklmnop")   # 16 bytes, no NUL (kernel max is 15)
    assert Event(full).ifname == "abcdefghijklmnop"
    junk = hand_packed(ifname=b"br0\0garbage")
    assert Event(junk).ifname == "br0"


def test_no_bytes_repr_anywhere():
    rows = []
    for raw in (encode(l4proto=6, tcp_flags=0x12, ifname="eth0", dmac="0a0b0c0d0e0f"),
                encode(kind=KIND_IPTABLE, probe=2, table="filter", chain="INPUT"),
                encode(kind=KIND_DROP, probe=3, drop_reason=77, location=LOCATION),
                hand_packed(ifname=b"\xff\xfebad", table=b"\x80x", l4proto=47)):
        rows.append(row_of(raw))
    rows.append(textrow.HEADER)
    for row in rows:
        assert "b'" not in row and 'b"' not in row and "\\x" not in row, row
        assert "\0" not in row


def test_stack_lines():
    assert textrow.RowFormatter.stack_lines(["a+0x1", "b+0x2"]) == ["    a+0x1", "    b+0x2"]


# --- clocks -------------------------------------------------------------------

def test_relative_clock_microseconds():
    clock = textrow.Clock(relative=True)
    base = 5_000_000_000
    assert clock.column(base) == "0.000000"
    assert clock.column(base + 1_000) == "0.000001"
    assert clock.column(base + 1_234_000) == "0.001234"
    assert clock.column(base + 1_500_000_000) == "1.500000"
    assert clock.column(base + 62_000_001_000) == "62.000001"


def test_relative_clock_in_rows():
    clock = textrow.Clock(relative=True)
    f = formatter(clock=clock)
    first = f.row(Event(encode(ts_ns=10**12, l4proto=17)))
    second = f.row(Event(encode(ts_ns=10**12 + 2_500, l4proto=17)))
    assert first.startswith("[0.000000][")
    assert second.startswith("[0.000002][") or second.startswith("[0.000003][")


def _hms_candidates(wall_seconds):
    return {time.strftime("%H:%M:%S", time.localtime(wall_seconds + d)) for d in (-1, 0, 1)}


def test_wall_clock_uses_the_event_time():
    clock = textrow.Clock(relative=False)
    now_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    now_wall = time.time()
    # an event from 2 h 17 min ago, printed now
    ago = (2 * 3600 + 17 * 60) * 10**9
    col = clock.column(now_mono - ago)
    assert col in _hms_candidates(now_wall - ago / 1e9)
    assert col not in _hms_candidates(now_wall)
    # the next event 1 s later shows the next second (no stale cache)
    later = clock.column(now_mono - ago + 10**9)
    assert later != col
    assert later in _hms_candidates(now_wall - ago / 1e9 + 1)
    # and going back to the earlier second gives the earlier text again
    assert clock.column(now_mono - ago) == col


def test_wall_clock_format_and_row():
    clock = textrow.Clock(relative=False)
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    row = formatter(clock=clock).row(Event(encode(ts_ns=mono, l4proto=17)))
    assert row[0] == "[" and row[9] == "]"
    hms = row[1:9]
    assert hms in _hms_candidates(time.time())
    assert len(hms) == 8 and hms[2] == hms[5] == ":"


def test_wall_ns():
    clock = textrow.Clock(relative=False)
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert abs(clock.wall_ns(mono) - time.time_ns()) < 10**9
