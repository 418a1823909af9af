"""The packet's story (story.py), JSON lines (jsonl.py), namespace names
(names.py) and the new flags, on synthetic events built with events.encode.

The event sequences are the seed's scenarios as skbtracer recorded them
(host 6.18 tracepoints; Debian 6.1 kprobes in the guest), shortened to the
rows that matter and with made-up skb addresses and namespace inodes.
"""

import json
import os
import random
import re

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)
from skbt_unit_helpers import run_cli

from skbtracer_lib import config, story
from skbtracer_lib.events import fields, textrow
from skbtracer_lib.events.decode import KIND_DROP, KIND_IPTABLE, KIND_ROUTE, Event, encode
from skbtracer_lib.outputs import jsonl, names
from skbtracer_lib.program import probes
from skbtracer_lib.story import tell

NS = {"client": 101, "node1": 100, "server": 102, "node2": 103, "server2": 104}
LABELS = {inode: name for name, inode in NS.items()}
REASONS = probes.DropReasons({2: "NOT_SPECIFIED", 6: "NETFILTER_DROP", 8: "OTHERHOST"}, "test")

TRACEPOINTS = ["netif_rx", "napi_gro_receive_entry", "netif_receive_skb", "net_dev_queue",
               "net_dev_start_xmit", "skb_copy_datagram_iovec", "kfree_skb", "consume_skb"]
KPROBES = ["__netif_receive_skb", "br_handle_frame", "br_handle_frame_finish",
           "br_nf_pre_routing", "br_nf_pre_routing_finish", "br_pass_frame_up", "br_forward",
           "skb_clone", "__br_forward", "br_forward_finish", "__dev_queue_xmit", "br_dev_xmit",
           "ip_rcv", "ip_rcv_finish", "ip_forward", "ip_output", "ip_finish_output",
           "ip_local_deliver", "udp_rcv", "__udp_enqueue_schedule_skb",
           "skb_copy_datagram_iovec", "nft_do_chain", "kfree_skb", "consume_skb"]

CLIENT, SERVICE, SERVER = "10.244.1.2", "10.96.0.10", "10.244.1.3"


def flow(sport, dst=SERVER, dport=9000, ip_id=4242, src=CLIENT):
    return dict(saddr=src, sport=sport, daddr=dst, dport=dport, ip_id=ip_id, l4proto=17)


class Trace:
    """Events in order, 1 us apart (or at explicit times)."""

    def __init__(self, probe_names, start=1_000_000):
        self.probe_names = probe_names
        self.events = []
        self.t = start

    def add(self, skb, func, where, pkt, ttl=64, **fields):
        self.t += 1000
        ns, _, ifname = where.partition("/")
        raw = dict(pkt)
        raw.update(fields)
        raw.setdefault("kind", KIND_DROP if func == "kfree_skb" else KIND_ROUTE)
        self.events.append(Event(encode(ts_ns=self.t, skb=skb, probe=self.probe_names.index(func),
                                        netns=NS.get(ns, 0), ifname=ifname, ttl=ttl, **raw)))
        return self

    def rows(self, skb, pkt, rows, ttl=64):
        for func, where in rows:
            self.add(skb, func, where, pkt, ttl=ttl)
        return self

    def story(self, visible=None, **kw):
        kw.setdefault("label", lambda inode: LABELS.get(inode, str(inode)))
        kw.setdefault("reasons", REASONS)
        kw.setdefault("symbolize", lambda address: "fn+0x%x" % (address & 0xfff))
        return story.build(self.events, self.probe_names, visible=visible, **kw)


A, B, C, D = 0xffff888000001a00, 0xffff888000002b00, 0xffff888000003c00, 0xffff888000004d00


def host_scenario1(trace, sport=41002, ip_id=4242):
    """Promiscuous cbr0, service -> server on the same node (tracepoints): the
    bridged clone (A, first a tap copy freed in the client) and the original
    (B) passed up, routed and queued back onto the bridge."""
    pre, post = flow(sport, SERVICE, 53, ip_id), flow(sport, ip_id=ip_id)
    trace.add(A, "consume_skb", "client/eth0", pre)
    trace.rows(B, pre, [("net_dev_queue", "client/eth0"), ("net_dev_start_xmit", "client/eth0"),
                        ("netif_rx", "node1/vethclient"),
                        ("netif_receive_skb", "node1/vethclient")])
    trace.add(C, "consume_skb", "node1/cbr0", post)
    trace.rows(B, post, [("net_dev_queue", "node1/cbr0"), ("net_dev_start_xmit", "node1/cbr0")])
    trace.rows(A, post, [("net_dev_queue", "node1/vethserver"),
                         ("net_dev_start_xmit", "node1/vethserver"), ("netif_rx", "server/eth0")])
    trace.add(B, "netif_receive_skb", "node1/cbr0", post)
    trace.rows(B, post, [("net_dev_queue", "node1/cbr0"), ("net_dev_start_xmit", "node1/cbr0"),
                         ("net_dev_queue", "node1/vethserver"),
                         ("net_dev_start_xmit", "node1/vethserver"),
                         ("netif_rx", "server/eth0")], ttl=63)
    trace.add(A, "netif_receive_skb", "server/eth0", post)
    trace.add(B, "netif_receive_skb", "server/eth0", post, ttl=63)
    return trace


def guest_scenario1(trace, sport=41002, ip_id=4242):
    """The same on kprobes (Debian 6.1), with the nat verdict row."""
    pre, post = flow(sport, SERVICE, 53, ip_id), flow(sport, ip_id=ip_id)
    trace.rows(B, pre, [("ip_output", "client/"), ("ip_finish_output", "client/eth0"),
                        ("skb_clone", "client/eth0")])
    trace.add(A, "consume_skb", "client/eth0", pre)
    trace.rows(B, pre, [("__dev_queue_xmit", "client/eth0"),
                        ("__netif_receive_skb", "node1/vethclient"),
                        ("br_handle_frame", "node1/vethclient"),
                        ("br_nf_pre_routing", "node1/vethclient")])
    trace.add(B, "nft_do_chain", "node1/cbr0", pre, kind=KIND_IPTABLE, pf=2, hook=0,
              table="nat", chain="PREROUTING", verdict=1)
    trace.rows(B, post, [("br_nf_pre_routing_finish", "node1/cbr0"), ("skb_clone", "node1/cbr0")])
    trace.add(C, "consume_skb", "node1/cbr0", post)
    trace.rows(B, post, [("__dev_queue_xmit", "node1/cbr0"), ("br_dev_xmit", "node1/cbr0"),
                         ("br_handle_frame_finish", "node1/vethclient"),
                         ("br_forward", "node1/vethclient"), ("skb_clone", "node1/vethclient")])
    trace.rows(A, post, [("__br_forward", "node1/vethclient"),
                         ("br_forward_finish", "node1/vethserver"),
                         ("__dev_queue_xmit", "node1/vethserver")])
    trace.rows(B, post, [("br_pass_frame_up", "node1/vethclient"),
                         ("__netif_receive_skb", "node1/cbr0"), ("ip_rcv", "node1/cbr0"),
                         ("ip_rcv_finish", "node1/cbr0"), ("ip_forward", "node1/cbr0")])
    trace.rows(B, post, [("ip_output", "node1/cbr0"), ("ip_finish_output", "node1/cbr0"),
                         ("__dev_queue_xmit", "node1/cbr0"), ("br_dev_xmit", "node1/cbr0"),
                         ("br_forward", "node1/cbr0"), ("__br_forward", "node1/cbr0"),
                         ("br_forward_finish", "node1/vethserver"),
                         ("__dev_queue_xmit", "node1/vethserver")], ttl=63)
    trace.rows(A, post, [("__netif_receive_skb", "server/eth0"), ("ip_rcv", "server/eth0"),
                         ("ip_local_deliver", "server/eth0"), ("udp_rcv", "server/eth0"),
                         ("__udp_enqueue_schedule_skb", "server/eth0")])
    trace.rows(B, post, [("__netif_receive_skb", "server/eth0"), ("ip_rcv", "server/eth0"),
                         ("ip_local_deliver", "server/eth0"), ("udp_rcv", "server/eth0"),
                         ("__udp_enqueue_schedule_skb", "server/eth0")], ttl=63)
    trace.add(A, "consume_skb", "", post)
    trace.add(B, "consume_skb", "", post, ttl=63)
    return trace


def host_scenario3(trace, sport=41004):
    """Promiscuous cbr0, client -> server directly: the passed-up original is
    OTHERHOST and dropped by ip_rcv; the bridged clone reaches the server."""
    pkt = flow(sport)
    trace.rows(B, pkt, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                        ("netif_receive_skb", "node1/vethclient")])
    trace.rows(A, pkt, [("net_dev_queue", "node1/vethserver"), ("netif_rx", "server/eth0")])
    trace.add(B, "netif_receive_skb", "node1/cbr0", pkt)
    trace.add(B, "kfree_skb", "node1/cbr0", pkt, drop_reason=8, location=0xffffffff81000123)
    trace.add(A, "netif_receive_skb", "server/eth0", pkt)
    return trace


def host_scenario7(trace, sport=41008):
    """Scenario 1 with kubenet's ebtables dedup rule: the routed copy is dropped."""
    pre, post = flow(sport, SERVICE, 53), flow(sport)
    trace.rows(B, pre, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                        ("netif_receive_skb", "node1/vethclient")])
    trace.rows(A, post, [("net_dev_queue", "node1/vethserver"), ("netif_rx", "server/eth0")])
    trace.add(B, "netif_receive_skb", "node1/cbr0", post)
    trace.add(B, "net_dev_queue", "node1/cbr0", post, ttl=63)
    trace.add(B, "kfree_skb", "node1/vethserver", post, ttl=63, drop_reason=6,
              location=0xffffffff81000456)
    trace.add(A, "netif_receive_skb", "server/eth0", post)
    return trace


def straight(trace, skb, sport, dst=SERVER, dport=9000, ip_id=4242, end="server/eth0"):
    """One skb, no copies: client -> node1 bridge -> end (tracepoints)."""
    pkt = flow(sport, dst, dport, ip_id)
    trace.rows(skb, pkt, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                          ("netif_receive_skb", "node1/vethclient"),
                          ("net_dev_queue", "node1/vethserver"), ("netif_rx", end),
                          ("netif_receive_skb", end)])
    return trace


# ---------------------------------------------------------------- duplicates

def test_scenario1_tracepoints_one_packet_one_duplicate():
    told = host_scenario1(Trace(TRACEPOINTS)).story()
    assert len(told.packets) == 1
    packet = told.packets[0]
    assert len(packet.copies) == 4           # the original, the clone, two freed tap copies
    assert len(told.duplicates) == 1
    line = told.duplicate_lines()[0]
    assert re.match(r"DUPLICATE: U 10\.244\.1\.2:41002->10\.244\.1\.3:9000 reached server/eth0 "
                    r"2 times \([0-9.]+ (us|ms|s) apart\): \(1\) ", line), line
    first, second = line.split("; (2) ")
    assert "TTL 64" in first and "net_dev_queue(vethserver)" in first
    assert second.startswith("routed, TTL 63: netif_receive_skb(node1/cbr0) → net_dev_queue")
    assert second.endswith("→ server/eth0")


def test_scenario1_kprobes_names_both_routes():
    told = guest_scenario1(Trace(KPROBES)).story()
    assert len(told.packets) == 1 and len(told.duplicates) == 1
    line = told.duplicate_lines()[0]
    assert ("(1) bridged, TTL 64: br_forward(node1/vethclient) → __br_forward → server/eth0, "
            "delivered to a socket") in line
    assert ("(2) routed, TTL 63: br_pass_frame_up(node1/vethclient) → ip_rcv(cbr0) → "
            "ip_forward → ip_output → br_forward → __br_forward → server/eth0") in line


@pytest.mark.parametrize("build, probe_names", [(host_scenario1, TRACEPOINTS),
                                                (guest_scenario1, KPROBES)])
def test_scenario1_path_names_both_routes(build, probe_names):
    told = build(Trace(probe_names)).story(iptable_traced=True)
    path = told.path_text(told.packets[0])
    assert path.startswith("client/eth0 > node1/vethclient > cbr0 > {")
    assert path.endswith("} > server/eth0")
    branches = path[path.index("{") + 1:path.index("}")].split(" | ")
    assert len(branches) == 2
    assert branches[1] == "routed: node1/cbr0 > vethserver"
    assert branches[0].endswith("node1/vethserver")
    if probe_names is KPROBES:
        assert branches[0] == "bridged: node1/vethserver"
        assert told.netfilter_text(told.packets[0]) == "nat PREROUTING ACCEPT"
    assert told.flow_text(told.packets[0]) == \
        "U 10.244.1.2:41002->10.96.0.10:53 (DNAT ->10.244.1.3:9000)"


def test_scenario1_ends_and_table():
    told = guest_scenario1(Trace(KPROBES)).story(iptable_traced=True)
    assert told.packet_end_text(told.packets[0]) == "2x queued to a UDP socket in server"
    lines, left_out = tell.packet_table(told, width=1000)
    header, rule, row = lines
    assert header.split() == ["#", "FLOW", "PATH", "NETFILTER", "END", "SKBS"]
    assert row.split()[0] == "1" and row.split()[-1] == "4" and left_out == 0
    lines, _left_out = tell.flow_table(told, width=1000)
    header, rule, row = lines
    assert header.split() == ["PACKETS", "FLOW", "PATH", "NETFILTER", "END", "SKBS", "SEEN",
                              "TIME"]
    assert row.split()[0] == "#1" and "2x queued to a UDP socket in server" in row


def test_tracepoint_ends_are_arrivals_not_vanishings():
    """Without a local-delivery probe, "last seen at a device's receive point" is
    as far as the run can see: no VANISHED flag, and the table says so."""
    trace = host_scenario1(Trace(TRACEPOINTS))
    told = trace.story(visible=TRACEPOINTS, caveats=["local delivery (no probe)"])
    assert told.vanished_lines() == []
    assert told.packet_end_text(told.packets[0]) == \
        "2x reached server/eth0 (not seen after netif_receive_skb)"
    assert told.footnote() == "not visible in this run: local delivery (no probe)"


def test_no_duplicate_when_the_routed_copy_is_dropped():
    """The routed copy's drop is a note on a packet that got through, never
    its headline (issue 22: a delivered packet is not DROPPED)."""
    told = host_scenario7(Trace(TRACEPOINTS)).story()
    assert len(told.packets) == 1
    assert told.duplicates == []
    assert told.drop_lines() == []
    assert told.packet_end_text(told.packets[0]) == (
        "reached server/eth0 (not seen after netif_receive_skb); "
        "a copy dropped at node1/vethserver: NETFILTER_DROP (fn+0x456): "
        "no conntrack entry: INVALID, or not seen by conntrack")


def test_otherhost_copy_is_a_drop_not_a_duplicate():
    told = host_scenario3(Trace(TRACEPOINTS)).story()
    assert len(told.packets) == 1 and told.duplicates == []
    assert told.drop_lines() == []
    assert told.packet_end_text(told.packets[0]).endswith(
        "; a copy dropped at node1/cbr0: OTHERHOST (fn+0x123)")
    assert told.path_text(told.packets[0]) == \
        "client/eth0 > node1/vethclient > {node1/cbr0 (dropped) | node1/vethserver > server/eth0}"


@pytest.mark.parametrize("pause_ns", [500_000_000, 20_000])
def test_six_scenarios_in_one_trace_one_duplicate(pause_ns):
    """As testbed/scenarios.py runs them (0.5 s apart), and back to back; the
    same skb addresses and IP ids in every scenario."""
    trace = Trace(TRACEPOINTS)
    for run in (lambda: host_scenario1(trace, sport=41002),
                lambda: straight(trace, 0xffff888000010000, 41003, "10.96.0.20", 53),
                lambda: host_scenario3(trace, sport=41004),
                lambda: straight(trace, 0xffff888000020000, 41005, SERVICE, 53),
                lambda: straight(trace, 0xffff888000030000, 41006, "10.96.0.20", 53),
                lambda: straight(trace, 0xffff888000040000, 41007),
                lambda: host_scenario7(trace, sport=41008)):
        run()
        trace.t += pause_ns
    told = trace.story()
    assert [told.flow_text(p).split(":")[1].split("->")[0] for p in told.packets] == \
        [str(port) for port in range(41002, 41009)]
    assert len(told.duplicates) == 1
    assert ":41002->" in told.duplicate_lines()[0]


def test_events_out_of_order_tell_the_same_story():
    events = host_scenario1(Trace(TRACEPOINTS)).events
    shuffled = list(events)
    random.Random(6).shuffle(shuffled)
    a = story.build(events, TRACEPOINTS, label=LABELS.get)
    b = story.build(shuffled, TRACEPOINTS, label=LABELS.get)
    assert a.duplicate_lines() == b.duplicate_lines()
    assert a.path_text(a.packets[0]) == b.path_text(b.packets[0])


def test_two_datagrams_of_one_flow_with_ip_id_zero_are_two_packets():
    """UDP with DF and an unconnected socket sends IP id 0: equal headers are
    one flow, not one packet. Each datagram reached the server once."""
    trace = Trace(TRACEPOINTS)
    straight(trace, A, 40000, ip_id=0)
    trace.add(A, "consume_skb", "", flow(40000, ip_id=0))
    straight(trace, A, 40000, ip_id=0)          # the freed skb's memory, reused
    straight(trace, B, 40000, ip_id=0)          # a third one in another skb
    told = trace.story()
    assert len(told.packets) == 3
    assert told.duplicates == []


def test_a_late_free_still_ends_its_copy():
    """6.x frees many skbs later on another CPU: consume_skb can come seconds
    after the last row, and is still the end of that skb, not a new packet."""
    trace = Trace(TRACEPOINTS)
    straight(trace, A, 40000)
    trace.t += 3_000_000_000
    trace.add(A, "consume_skb", "", flow(40000))
    told = trace.story()
    assert len(told.packets) == 1 and len(told.packets[0].copies) == 1
    assert told.packet_end_text(told.packets[0]) == "reached server/eth0, freed"


def test_same_skb_address_reused_without_a_free_row():
    """No free seen (e.g. a deferred free): an address back at its first point
    with the same flow is a new skb."""
    trace = Trace(TRACEPOINTS)
    straight(trace, A, 40000, ip_id=0)
    straight(trace, A, 40000, ip_id=0)
    told = trace.story()
    assert len(told.packets) == 2 and told.duplicates == []


def test_reused_address_with_another_packet_is_a_new_copy():
    trace = Trace(TRACEPOINTS)
    straight(trace, A, 40000, ip_id=1)
    straight(trace, A, 40001, ip_id=2)
    told = trace.story()
    assert len(told.packets) == 2
    assert [len(p.copies) for p in told.packets] == [1, 1]


def test_tap_copy_at_the_destination_is_not_a_duplicate():
    """tcpdump in the server pod: a clone freed at server/eth0."""
    trace = Trace(TRACEPOINTS)
    straight(trace, A, 40000)
    trace.add(B, "consume_skb", "server/eth0", flow(40000))
    told = trace.story()
    assert len(told.packets) == 1 and len(told.packets[0].copies) == 2
    assert told.duplicates == []
    assert told.path_text(told.packets[0]) == \
        "client/eth0 > node1/vethclient > vethserver > server/eth0"


def test_handover_to_a_new_skb_is_one_path():
    """skb A is copied into B (e.g. unshared) and freed: no branch, no duplicate."""
    trace = Trace(TRACEPOINTS)
    pkt = flow(40000)
    trace.rows(A, pkt, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                        ("netif_receive_skb", "node1/vethclient"), ("consume_skb", "node1/cbr0")])
    trace.rows(B, pkt, [("net_dev_queue", "node1/vethserver"), ("netif_rx", "server/eth0"),
                        ("netif_receive_skb", "server/eth0")])
    told = trace.story()
    packet = told.packets[0]
    assert len(packet.copies) == 2 and told.duplicates == []
    assert told.path_text(packet) == \
        "client/eth0 > node1/vethclient > vethserver > server/eth0"
    assert told.packet_end_text(packet) == \
        "reached server/eth0 (not seen after netif_receive_skb)"


def test_same_socket_twice_through_two_interfaces_is_a_duplicate():
    trace = Trace(KPROBES)
    pkt = flow(40000)
    trace.add(A, "__dev_queue_xmit", "server/veth0", pkt)
    trace.add(B, "ip_rcv", "server/eth1", pkt)
    trace.add(A, "ip_rcv", "server/eth0", pkt)
    trace.add(B, "__udp_enqueue_schedule_skb", "server/eth1", pkt)
    trace.add(A, "__udp_enqueue_schedule_skb", "server/eth0", pkt)
    told = trace.story()
    assert len(told.duplicates) == 1
    assert told.duplicate_lines()[0].startswith(
        "DUPLICATE: U 10.244.1.2:40000->10.244.1.3:9000 reached a socket 10.244.1.3:9000 in "
        "server 2 times")


def test_vanished_is_flagged_with_what_could_not_be_seen():
    trace = Trace(KPROBES)
    pkt = flow(40000)
    trace.rows(A, pkt, [("__dev_queue_xmit", "client/eth0"), ("__netif_receive_skb", "node1/cbr0"),
                        ("ip_rcv", "node1/cbr0"), ("ip_forward", "node1/cbr0")])
    told = trace.story(caveats=["drops (not traced without --drop)"],
                       ended_ns=trace.t + 5_000_000_000)
    assert told.vanished_lines() == [
        "VANISHED: U 10.244.1.2:40000->10.244.1.3:9000 last seen at node1/cbr0 (ip_forward): "
        "no delivery, drop, free or exit seen; not visible here: drops (not traced without "
        "--drop)"]
    assert "(vanished)" in told.path_text(told.packets[0])
    soon = trace.story(ended_ns=trace.t + 1_000_000)
    assert "may have been in flight" in soon.vanished_lines()[0]
    assert trace.story(routes_traced=False).vanished_lines() == []


def test_left_through_an_interface():
    trace = Trace(TRACEPOINTS)
    pkt = flow(40000, "8.8.8.8", 53)
    trace.rows(A, pkt, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                        ("netif_receive_skb", "node1/vethclient"), ("net_dev_queue", "node1/eth0"),
                        ("net_dev_start_xmit", "node1/eth0"), ("consume_skb", "node1/eth0")])
    told = trace.story()
    assert told.packet_end_text(told.packets[0]) == "left via node1/eth0"
    assert told.vanished_lines() == [] and told.drop_lines() == []


def test_late_verdict_row_after_a_drop_stays_with_the_dropped_skb():
    """nf_tables' bridge family frees the skb before nft_do_chain returns."""
    trace = Trace(KPROBES)
    pkt = flow(40000)
    trace.rows(A, pkt, [("__dev_queue_xmit", "client/eth0"), ("__netif_receive_skb", "node1/cbr0"),
                        ("__br_forward", "node1/cbr0")])
    trace.add(A, "kfree_skb", "node1/vethserver", pkt, drop_reason=6)
    trace.add(A, "nft_do_chain", "node1/vethserver", pkt, kind=KIND_IPTABLE, pf=7, hook=3,
              table="filter", chain="OUTPUT", verdict=2)
    told = trace.story(iptable_traced=True)
    assert len(told.packets) == 1 and len(told.packets[0].copies) == 1
    assert told.vanished_lines() == []
    assert told.netfilter_text(told.packets[0]) == "bridge filter OUTPUT STOLEN"


def test_ipv6_tcp_and_icmp_flows():
    trace = Trace(TRACEPOINTS)
    trace.add(A, "net_dev_queue", "client/eth0", dict(family=6, saddr="fd00::2", daddr="fd00::3",
                                                      l4proto=6, sport=5000, dport=80,
                                                      tcp_seq=7, tcp_flags=0x02))
    trace.add(B, "net_dev_queue", "client/eth0", dict(saddr=CLIENT, daddr=SERVER, l4proto=1,
                                                      icmp_type=8, icmp_id=9, ip_id=5))
    told = trace.story()
    assert [told.flow_text(p) for p in told.packets] == [
        "T [fd00::2]:5000->[fd00::3]:80", "I 10.244.1.2->10.244.1.3"]


def test_story_book_keeps_at_most_its_limit_and_names_new_namespaces():
    class Names:
        def __init__(self):
            self.labels = {}
            self.asked = []

        def label(self, inode):
            self.asked.append(inode)
            self.labels[inode] = "ns%d" % inode
            return self.labels[inode]

    names_ = Names()
    book = story.StoryBook(names_, limit=3)
    for event in straight(Trace(TRACEPOINTS), A, 40000).events:
        book.add(event)
    assert len(book.events) == 3 and book.beyond == 3
    assert names_.asked == [NS["client"], NS["node1"], NS["server"]]   # once each


def test_large_trace_table_is_capped_and_keeps_flagged_packets():
    trace = Trace(TRACEPOINTS)
    for i in range(12):
        straight(trace, 0xffff888000100000 + i * 0x100, 30000 + i)
    host_scenario1(trace, sport=41002)
    told = trace.story()
    lines, left_out = tell.packet_table(told, width=1000, limit=5)
    assert len(lines) == 2 + 5 and left_out == 8
    assert any("41002" in line for line in lines[2:])
    lines, left_out = tell.flow_table(told, width=1000, limit=5)
    assert len(lines) == 2 + 5 and left_out == 8
    assert any("41002" in line for line in lines[2:])


# ---------------------------------------------------------------- JSON

def test_story_objects_are_json():
    told = guest_scenario1(Trace(KPROBES)).story(iptable_traced=True)
    objects = [json.loads(jsonl.dumps(o)) for o in story.story_objects(told)]
    assert [o["type"] for o in objects] == ["summary", "flow", "duplicate"]
    summary, flow, duplicate = objects
    assert flow["packets"] == [1] and flow["count"] == 1 and flow["skbs"] == "4"
    assert flow["path"] == summary["path"] and flow["end"] == summary["end"]
    assert flow["network_ns"]["min"] == flow["network_ns"]["max"] > 0
    assert summary["flags"] == ["DUPLICATE"] and summary["skbs"] == 4
    assert summary["netfilter"] == [{"pf": 2, "table": "nat", "chain": "PREROUTING",
                                     "hook": "PREROUTING", "verdict": "ACCEPT"}]
    assert {c["end"]["kind"] for c in summary["copies"]} == {"delivered", "tap"}
    assert duplicate["times"] == 2
    assert duplicate["place"] == {"netns": NS["server"], "netns_name": "server", "ifname": "eth0"}
    assert [r["label"] for r in duplicate["routes"]] == ["bridged", "routed"]
    assert duplicate["routes"][1]["steps"][:3] == ["br_pass_frame_up(node1/vethclient)",
                                                   "ip_rcv(cbr0)", "ip_forward"]
    assert duplicate["text"] == told.duplicate_lines()[0]


class FixedClock:
    offset = 1_700_000_000_000_000_000

    def wall_ns(self, ts_ns):
        return ts_ns + self.offset

    def column(self, ts_ns):
        return "12:34:56"


EVENT_KEYS = {"type", "time_ns", "time", "ktime_ns", "netns", "netns_name", "container_id",
              "pod_uid", "ifname", "ifindex", "dmac", "smac", "family", "l4proto", "proto",
              "saddr", "daddr", "sport", "dport", "ttl", "ip_id", "tcp_seq", "tcp_flags",
              "icmp_type", "icmp_id", "len", "skb", "pkt_type", "pkt_type_name", "kind", "func",
              "pid", "nf", "drop", "ct", "node", "run_id"} | {f.json for f in fields.JSON_FIELDS}
# (the field table's own keys, fields.JSON_FIELDS, are part of the schema too)


def json_formatter(names_=None):
    rows = textrow.RowFormatter(KPROBES, REASONS, lambda a: "fn+0x%x" % (a & 0xfff), FixedClock())
    return jsonl.JsonFormatter(rows, names_)


def test_json_event_schema():
    e = Event(encode(ts_ns=5, skb=A, probe=KPROBES.index("ip_rcv"), netns=NS["node1"],
                     ifindex=3, ifname="cbr0", dmac="020000010003", smac="020000000101",
                     saddr=CLIENT, daddr=SERVER, sport=41002, dport=9000, ip_id=7, ttl=63,
                     pkt_type=3, len=43, pid=99))
    obj = json.loads(json_formatter().line(e))
    assert set(obj) == EVENT_KEYS
    assert obj["time_ns"] == FixedClock.offset + 5
    assert obj["time"] == "2023-11-14T22:13:20.000000005Z"
    assert (obj["ktime_ns"], obj["netns"], obj["ifname"], obj["ifindex"]) == \
        (5, NS["node1"], "cbr0", 3)
    assert (obj["dmac"], obj["smac"]) == ("02:00:00:01:00:03", "02:00:00:00:01:01")
    assert (obj["proto"], obj["sport"], obj["dport"], obj["ip_id"], obj["ttl"]) == \
        ("udp", 41002, 9000, 7, 63)
    assert obj["tcp_seq"] is None and obj["icmp_type"] is None and obj["tcp_flags"] is None
    assert (obj["skb"], obj["pkt_type"], obj["pkt_type_name"]) == ("%x" % A, 3, "OTHERHOST")
    assert (obj["kind"], obj["func"], obj["nf"], obj["drop"]) == ("route", "ip_rcv", None, None)
    assert "stack" not in obj and obj["netns_name"] is None


def test_json_netfilter_drop_tcp_icmp_and_stack():
    f = json_formatter()
    nf = json.loads(f.line(Event(encode(kind=KIND_IPTABLE, probe=KPROBES.index("nft_do_chain"),
                                        pf=2, hook=0, table="nat", chain="PREROUTING",
                                        verdict=1, l4proto=6, tcp_seq=123, tcp_flags=0x12,
                                        sport=1, dport=2))))
    assert nf["nf"] == {"pf": 2, "pf_name": "IPV4", "table": "nat", "chain": "PREROUTING",
                        "hook": "PREROUTING", "verdict": "ACCEPT", "verdict_code": 1}
    assert (nf["kind"], nf["tcp_seq"], nf["tcp_flags"]) == ("iptable", 123, "ACK,SYN")
    drop = json.loads(f.line(Event(encode(kind=KIND_DROP, probe=KPROBES.index("kfree_skb"),
                                          drop_reason=8, location=0xffffffff81000123,
                                          l4proto=1, icmp_type=8, icmp_id=9)),
                             stack=["ip_rcv_core+0x1", "ip_rcv+0x2"]))
    assert drop["drop"] == {"reason": "OTHERHOST", "reason_code": 8, "location": "fn+0x123",
                            "location_addr": "ffffffff81000123", "conntrack": None}
    assert (drop["proto"], drop["icmp_type"], drop["icmp_id"], drop["sport"]) == \
        ("icmp", 8, 9, None)
    assert drop["stack"] == ["ip_rcv_core+0x1", "ip_rcv+0x2"]


def test_json_fast_line_is_the_event_object(tmp_path):
    """line() writes route rows by hand: the same text as dumps(event())."""
    fake = FakeSystem(tmp_path)
    blue = fake.netns("blue")
    pod = fake.process(300, "0::/kubepods/besteffort/pod%s/%s\n" % (POD, DOCKER_ID))
    resolver = names.NetnsNames(proc=str(fake.proc), netns_dirs=[str(fake.netns_dir)])
    f = json_formatter(resolver)
    cases = [dict(), dict(netns=blue, ifname='we"ird\\', l4proto=6, tcp_seq=2**32 - 1,
                          tcp_flags=0xff, sport=65535, dport=1),
             dict(netns=pod, l4proto=1, icmp_type=8, icmp_id=7, ip_id=65535, pkt_type=9),
             dict(netns=99999, family=6, saddr="fe80::1", daddr="ff02::1", l4proto=58,
                  icmp_type=128, probe=99),
             dict(l4proto=47, ttl=255, len=2**31, pid=2**31, ifindex=2**31)]
    for fields in cases:
        e = Event(encode(ts_ns=123456789, skb=A, **fields))
        assert f.line(e) == jsonl.dumps(f.event(e))
        json.loads(f.line(e))


def test_json_names_come_from_the_resolver(tmp_path):
    fake = FakeSystem(tmp_path)
    inode = fake.netns("blue")
    resolver = names.NetnsNames(proc=str(fake.proc), netns_dirs=[str(fake.netns_dir)])
    obj = json.loads(json_formatter(resolver).line(Event(encode(netns=inode))))
    assert (obj["netns"], obj["netns_name"], obj["container_id"]) == (inode, "blue", None)


def test_json_and_text_rows_carry_the_same_fields():
    """What --json says can be turned back into the text row of the same event."""
    rows = textrow.RowFormatter(KPROBES, REASONS, lambda a: "fn+0x%x" % (a & 0xfff), FixedClock())
    jf = json_formatter()
    trace = guest_scenario1(Trace(KPROBES))
    trace.add(C, "kfree_skb", "node1/cbr0", flow(1), drop_reason=8, location=0xffffffff81000123)
    trace.add(C, "__dev_queue_xmit", "node1/cbr0", dict(l4proto=6, sport=1, dport=2,
                                                        tcp_flags=0x18, saddr=CLIENT, daddr=SERVER))
    for icmp_type in (8, 0, 3):
        trace.add(D, "ip_rcv", "node1/cbr0", dict(l4proto=1, icmp_type=icmp_type, saddr=CLIENT,
                                                  daddr=SERVER))
    trace.add(D, "ip_rcv", "node1/cbr0", dict(family=6, l4proto=58, icmp_type=129,
                                              saddr="fd00::1", daddr="fd00::2"))
    trace.add(D, "ip_rcv", "node1/cbr0", dict(l4proto=47, saddr=CLIENT, daddr=SERVER))
    for e in trace.events:
        obj = json.loads(jf.line(e))
        assert rows.row(e) == jsonl.text_row(obj, "12:34:56")


# ---------------------------------------------------------------- names

class FakeSystem:
    """A /proc and /run/netns made of plain files: their inodes stand for namespaces."""

    def __init__(self, root):
        self.proc = root / "proc"
        self.netns_dir = root / "netns"
        self.proc.mkdir()
        self.netns_dir.mkdir()
        (self.proc / "self" / "ns").mkdir(parents=True)
        (self.proc / "self" / "ns" / "net").write_text("")

    def netns(self, name):
        path = self.netns_dir / name
        path.write_text("")
        return os.stat(path).st_ino

    def process(self, pid, cgroup, netns_file=None):
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True)
        net = d / "ns" / "net"
        if netns_file is not None:
            os.link(netns_file, net)
        else:
            net.write_text("")
        (d / "cgroup").write_text(cgroup)
        return os.stat(net).st_ino


DOCKER_ID = "4f1c" + "0" * 56 + "abcd"
POD = "8d7b4a2e-1f3c-4b5a-9e6d-0c1b2a3f4e5d"


@pytest.mark.parametrize("cgroup, container, pod", [
    ("0::/system.slice/docker-%s.scope\n" % DOCKER_ID, DOCKER_ID, None),
    ("12:memory:/docker/%s\n" % DOCKER_ID, DOCKER_ID, None),
    ("0::/kubepods/besteffort/pod%s/%s\n" % (POD, DOCKER_ID), DOCKER_ID, POD),
    ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/"
     "cri-containerd-%s.scope\n" % (POD.replace("-", "_"), DOCKER_ID), DOCKER_ID, POD),
    ("0::/user.slice/user-0.slice/session-1.scope\n", None, None),
])
def test_container_of_cgroup_paths(cgroup, container, pod):
    assert names.container_of(cgroup) == (container, pod)


def test_names_ip_netns_container_pid_and_inode(tmp_path):
    fake = FakeSystem(tmp_path)
    blue = fake.netns("blue")
    docker = fake.process(200, "0::/system.slice/docker-%s.scope\n" % DOCKER_ID)
    pod = fake.process(300, "0::/kubepods/besteffort/pod%s/%s\n" % (POD, DOCKER_ID))
    plain = fake.process(400, "0::/user.slice\n")
    resolver = names.NetnsNames(proc=str(fake.proc), netns_dirs=[str(fake.netns_dir)])
    assert resolver.label(blue) == "blue"
    assert resolver.label(docker) == "ctr:%s" % DOCKER_ID[:12]
    assert resolver.label(pod) == "pod:%s" % POD
    assert resolver.lookup(pod).container_id == DOCKER_ID
    assert resolver.label(plain) == "pid:400"
    assert resolver.label(999999) == "999999"
    assert resolver.label(0) == "0"
    assert resolver.unresolved == {999999}


def test_names_of_a_namespace_made_later_are_found_on_first_sight(tmp_path):
    fake = FakeSystem(tmp_path)
    resolver = names.NetnsNames(proc=str(fake.proc), netns_dirs=[str(fake.netns_dir)])
    assert resolver.label(fake.netns("early")) == "early"
    later = fake.netns("later")                     # made after the resolver started
    assert resolver.label(later) == "later"


def test_a_deleted_namespaces_number_is_named_anew_once_the_directory_changed(tmp_path):
    """The kernel gives a new namespace the lowest free inode number: "b"
    deleted and "d" made may have the same one (a hard link stands for it)."""
    fake = FakeSystem(tmp_path)
    resolver = names.NetnsNames(proc=str(fake.proc), netns_dirs=[str(fake.netns_dir)])
    number = fake.netns("b")
    assert resolver.label(number) == "b"
    os.link(fake.netns_dir / "b", fake.netns_dir / "d")
    os.unlink(fake.netns_dir / "b")
    os.utime(fake.netns_dir, ns=(1, 1))     # a change stamp no earlier one had
    assert resolver.label(number) == "b"    # the cache, until the loop looks
    resolver.forget_if_changed()
    assert resolver.labels[number] == "d"   # named anew by the loop's one scan
    assert resolver.label(number) == "d"
    os.unlink(fake.netns_dir / "d")          # gone before its rows were read
    os.utime(fake.netns_dir, ns=(2, 2))
    resolver.forget_if_changed()
    assert resolver.label(number) == str(number)
    resolver.forget_if_changed()             # nothing changed: nothing dropped
    assert resolver.labels[number] == str(number)


def test_names_retry_is_rate_limited(tmp_path):
    """An inode nobody could name when first seen gets its name later (from
    the poll loop, at most every RETRY_SECONDS)."""
    now = [100.0]
    fake = FakeSystem(tmp_path)
    resolver = names.NetnsNames(proc=str(fake.proc), netns_dirs=[str(fake.netns_dir)],
                                clock=lambda: now[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    inode = os.stat(elsewhere).st_ino
    assert resolver.label(inode) == str(inode)
    assert resolver.unresolved == {inode}
    os.link(elsewhere, fake.netns_dir / "late")     # `ip netns attach` after first sight
    now[0] += names.RETRY_SECONDS / 4
    resolver.retry()
    assert resolver.label(inode) == str(inode)      # too soon to look again
    now[0] += names.RETRY_SECONDS
    resolver.retry()
    assert resolver.label(inode) == "late"
    assert resolver.unresolved == set()


def test_names_of_a_real_namespace(temp_netns):
    name, inode = temp_netns
    assert names.NetnsNames().label(inode) == name


def test_host_namespace_is_host():
    resolver = names.NetnsNames()
    if resolver.host_inode is None:
        pytest.skip("not running in pid 1's network namespace")
    assert resolver.label(resolver.host_inode) == "host"


def test_rows_with_names():
    class Names:
        labels = {}

        def label(self, inode):
            return LABELS.get(inode, str(inode))

    f = textrow.RowFormatter(TRACEPOINTS, REASONS, str, FixedClock(), names=Names())
    plain = textrow.RowFormatter(TRACEPOINTS, REASONS, str, FixedClock())
    e = Event(encode(netns=NS["server"], ifname="eth0", probe=0))
    assert f.row(e) == plain.row(e).replace("[%-10d]" % NS["server"], "[server    ]")


# ---------------------------------------------------------------- flags

def parse(*argv):
    return config.validate(config.build_parser().parse_args(list(argv)))


def test_defaults_summary_on_no_files():
    cfg = parse()
    assert cfg.summary and not cfg.names and cfg.json is None and cfg.output is None


def test_output_json_names_flags(tmp_path):
    out, js = str(tmp_path / "rows.txt"), str(tmp_path / "rows.jsonl")
    cfg = parse("-o", out, "--json=" + js, "--names", "--no-summary")
    assert (cfg.output, cfg.json, cfg.names, cfg.summary) == (out, js, True, False)
    assert parse("--json").json == "-"
    assert parse("--json", "-c", "3").json == "-"


@pytest.mark.parametrize("argv, message", [
    (["-o", "{exists}"], "-o/--output: '{exists}' exists; add --force to overwrite it"),
    (["--json={exists}"], "--json: '{exists}' exists; add --force to overwrite it"),
    (["-o", "{dir}"], "-o/--output: '{dir}' is a directory"),
    (["-o", "{dir}/no/such/file"], "-o/--output: no directory '{dir}/no/such'"),
    (["--force"], "--force applies only with -o/--output, --json=FILE or -w"),
    (["-o", "{new}", "--json={new}"], "-o/--output and --json=FILE name the same file '{new}'"),
])
def test_file_flag_errors_are_one_line_exit_2(tmp_path, argv, message):
    exists = tmp_path / "exists.txt"
    exists.write_text("keep me\n")
    paths = dict(exists=str(exists), dir=str(tmp_path), new=str(tmp_path / "new.txt"))
    proc = run_cli(*[a.format(**paths) for a in argv])
    assert proc.returncode == 2
    assert proc.stderr == "skbtracer: error: %s\n" % message.format(**paths)
    assert exists.read_text() == "keep me\n"
    assert not (tmp_path / "new.txt").exists()


def test_force_accepts_an_existing_file(tmp_path):
    exists = tmp_path / "exists.txt"
    exists.write_text("old\n")
    cfg = parse("-o", str(exists), "--force")
    assert cfg.output == str(exists) and cfg.force
    assert exists.read_text() == "old\n"            # checking flags writes nothing


def test_help_lists_the_new_flags():
    text = config.build_parser().format_help()
    for flag in ("-o FILE, --output FILE", "--json [FILE]", "--force", "--names", "--no-summary"):
        assert flag in text


def test_conntrack_drops_named_in_the_dropped_line():
    """A drop conntrack decided (ct_fault) is named after the reason; a netfilter drop of an
    skb with no entry where conntrack is at work is INVALID; files saved before the ct fields
    existed say nothing of conntrack."""
    from skbtracer_lib.events import conntrack
    trace = Trace(TRACEPOINTS)
    first, second = flow(41100), flow(41101)
    trace.rows(A, first, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient")])
    trace.add(A, "kfree_skb", "node1/vethclient", first, drop_reason=6, location=0xffffffff81000456,
              ct_fault=conntrack.FAULT_INSERT, ct=0xffff888000001002)
    trace.rows(B, second, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient")])
    trace.add(B, "kfree_skb", "node1/vethclient", second, drop_reason=6,
              location=0xffffffff81000456)
    told = trace.story()
    lines = told.drop_lines()
    assert len(lines) == 2, lines
    assert "NETFILTER_DROP (fn+0x456): conntrack lost the race to insert" in lines[0], lines
    assert lines[1].endswith("NETFILTER_DROP (fn+0x456): no conntrack entry: INVALID"), lines
    old = trace.story(conntrack_read=False)
    assert old.drop_lines()[1].endswith("NETFILTER_DROP (fn+0x456)")
    assert "lost the race" in old.drop_lines()[0]


def test_a_tcp_skb_the_socket_made_is_not_a_duplicate():
    """tcp_collapse copies a queued segment's headers into a new skb: one packet, two skbs
    copied to the application, the second never seen on a device. Not a DUPLICATE (issue 22's
    bulk transfer showed one under load); two skbs that each came over a device still are."""
    tcp = dict(flow(41200), l4proto=6, tcp_seq=1000)
    trace = Trace(TRACEPOINTS)
    trace.rows(A, tcp, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                        ("net_dev_queue", "node1/vethserver"), ("netif_rx", "server/eth0"),
                        ("netif_receive_skb", "server/eth0"), ("skb_copy_datagram_iovec", "server/")])
    trace.add(B, "skb_copy_datagram_iovec", "server/", tcp)
    told = trace.story()
    assert told.duplicates == [], told.duplicate_lines()
