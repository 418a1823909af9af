"""-r: reading saved JSON lines back, merging nodes (clock offsets), the
hop-to-hop latency arithmetic; on event streams built here (the kernel
tests read real ones). Bad input: test_replay_input.py."""

import io
import json
import random
import re

import pytest

from skbtracer_lib import config
from skbtracer_lib.events import textrow
from skbtracer_lib.events.decode import Event, encode
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import probes
from skbtracer_lib.replay import read as replay_read
from skbtracer_lib.replay import session as replay_session
from skbtracer_lib.story import latency, merge

TRACEPOINTS = ["netif_rx", "netif_receive_skb", "net_dev_queue", "net_dev_start_xmit",
               "skb_copy_datagram_iovec", "kfree_skb", "consume_skb"]
NS = {"client": 201, "node1": 200, "node2": 300, "server2": 301}
BASE_WALL = 1_700_000_000_000_000_000
WIRE_NS = 20_000            # node1/eth0 -> node2/eth0


class Clock:
    def __init__(self, offset):
        self.offset = offset

    def wall_ns(self, ts):
        return ts + self.offset

    def column(self, ts):
        return "00:00:00"


class Info:
    def __init__(self, label):
        self.label, self.container_id, self.pod_uid = label, None, None


class Names:
    def lookup(self, inode):
        return Info({v: k for k, v in NS.items()}[inode])


def hop_events(skb, rows, start, step=10_000, **pkt):
    """[(Event)] of one skb through rows [(func, "ns/ifname", ttl, dst, dport)]."""
    out = []
    for i, (func, where, ttl, daddr, dport) in enumerate(rows):
        ns, _, ifname = where.partition("/")
        out.append(Event(encode(ts_ns=start + i * step, skb=skb, probe=TRACEPOINTS.index(func),
                                netns=NS[ns], ifname=ifname, ttl=ttl, daddr=daddr, dport=dport,
                                **pkt)))
    return out


def request(ip_id, sport, t):
    """A datagram client -> service (DNAT on node1) -> server2: node1's and node2's events."""
    pkt = dict(saddr="10.244.1.2", sport=sport, ip_id=ip_id, l4proto=17)
    svc, pod = ("10.96.0.20", 53), ("10.244.2.3", 9000)
    one = hop_events(0xffff888000001a00 + sport, [
        ("net_dev_queue", "client/eth0", 64) + svc,
        ("netif_rx", "node1/vethclient", 64) + svc,
        ("netif_receive_skb", "node1/cbr0", 64) + pod,
        ("net_dev_queue", "node1/eth0", 63) + pod,
        ("net_dev_start_xmit", "node1/eth0", 63) + pod], t, **pkt)
    arrive = one[-1].ts_ns + WIRE_NS
    two = hop_events(0xffff888000001a00 + sport, [      # the same address: another kernel's skb
        ("netif_rx", "node2/eth0", 63) + pod,
        ("netif_receive_skb", "node2/eth0", 63) + pod,
        ("net_dev_queue", "node2/cbr0", 62) + pod,
        ("netif_rx", "server2/eth0", 62) + pod,
        ("netif_receive_skb", "server2/eth0", 62) + pod], arrive, **pkt)
    return one, two


def reply(ip_id, dport, t):
    """server2 -> client (un-DNATed on node1 later): node2's events, then node1's."""
    pkt = dict(saddr="10.244.2.3", sport=9000, ip_id=ip_id, l4proto=17)
    client = ("10.244.1.2", dport)
    two = hop_events(0xffff888000009900 + dport, [
        ("net_dev_queue", "server2/eth0", 64) + client,
        ("netif_rx", "node2/vethserver2", 64) + client,
        ("net_dev_queue", "node2/eth0", 63) + client], t, **pkt)
    arrive = two[-1].ts_ns + WIRE_NS
    one = hop_events(0xffff888000009900 + dport, [
        ("netif_rx", "node1/eth0", 63) + client,
        ("net_dev_queue", "node1/cbr0", 62) + client], arrive, **pkt)
    return two, one


def write_run(path, node, events, skew_ns=0, shuffle=False, end=True):
    rows = textrow.RowFormatter(TRACEPOINTS, probes.DropReasons({}, "test"), hex,
                               Clock(BASE_WALL + skew_ns))
    fmt = jsonl.JsonFormatter(rows, Names(), node=node, run_id="run-" + node)
    lines = [jsonl.dumps(jsonl.start_object("tracepoint", node=node, run_id=fmt.run_id,
                                                probes=TRACEPOINTS, attached=TRACEPOINTS,
                                                modes=["route"], iptable_traced=False))]
    body = [fmt.line(e) for e in sorted(events, key=lambda e: e.ts_ns)]
    if shuffle:
        random.Random(7).shuffle(body)
    lines += body
    if end:
        last = max(e.ts_ns for e in events) + 5_000_000_000
        lines.append(jsonl.dumps(jsonl.end_object(node, fmt.run_id, last, 0, [])))
    path.write_text("\n".join(lines) + "\n")
    return path


def tell(*paths, args=()):
    cfg = config.parse_args([*args, "-r", *map(str, paths)])
    out, err = io.StringIO(), io.StringIO()
    runs = replay_read.read_files(cfg.read, lambda text: err.write("warning: %s\n" % text))
    status = replay_session.saved_session(cfg, runs, out=out, err=err).run()
    return status, out.getvalue(), err.getvalue()


def two_node_files(tmp_path, skew_ns, both_directions=False, shuffle=False):
    node1, node2 = [], []
    for i in range(3):
        one, two = request(1000 + i, 41000 + i, 1_000_000_000 + i * 50_000_000)
        node1 += one
        node2 += two
        if both_directions:
            two, one = reply(2000 + i, 41000 + i, 1_010_000_000 + i * 50_000_000)
            node1 += one
            node2 += two
    return (write_run(tmp_path / "a.jsonl", "node1", node1),
            write_run(tmp_path / "b.jsonl", "node2", node2, skew_ns, shuffle=shuffle))


def offset_of(err):
    found = re.search(r"clock offset of node2 against node1: ([+-][0-9.]+) s", err)
    assert found, err
    return float(found.group(1))


PATH = ("node1:client/eth0 > node1/vethclient > cbr0 > eth0 => node2/eth0 > cbr0 > "
        "node2:server2/eth0")


@pytest.mark.parametrize("skew", [3_700_000_000, -900_000_000])
def test_two_nodes_one_packet_and_the_clock_offset(tmp_path, skew):
    a, b = two_node_files(tmp_path, skew)
    status, out, err = tell(a, b, args=["--width", "1000"])
    assert status == 0, err
    # one direction only: the estimate is off by the wire delay, no more
    assert abs(offset_of(err) - (skew + WIRE_NS) / 1e9) < 1e-6, err
    assert "story of 3 packets" in err, err
    assert err.count(PATH) == 3, err
    assert len(out.splitlines()) == 1 + 30          # header + every row


@pytest.mark.parametrize("skew", [3_700_000_000, -900_000_000])
def test_both_directions_cancel_the_wire_delay(tmp_path, skew):
    a, b = two_node_files(tmp_path, skew, both_directions=True)
    status, _out, err = tell(a, b, args=["--width", "1000"])
    assert status == 0, err
    assert abs(offset_of(err) - skew / 1e9) < 1e-6, err
    assert "both directions" in err and "from 6 packets" in err
    assert err.count(PATH) == 3, err


def test_reordered_lines_tell_the_same_story(tmp_path):
    a, b = two_node_files(tmp_path, 3_700_000_000)
    _s, out, err = tell(a, b)
    (tmp_path / "s").mkdir()
    a2, b2 = two_node_files(tmp_path / "s", 3_700_000_000, shuffle=True)
    _s, out2, err2 = tell(a2, b2)
    assert out2 == out
    assert err2.replace(str(tmp_path / "s"), str(tmp_path)) == err


def test_one_file_reads_as_live(tmp_path):
    one, _two = request(1000, 41000, 1_000_000_000)
    a = write_run(tmp_path / "a.jsonl", "node1", one)
    status, out, err = tell(a)
    assert status == 0
    rows = out.splitlines()
    assert rows[0] == textrow.HEADER and len(rows) == 6
    assert re.match(r"^\[\d\d:\d\d:\d\d\]\[201 +\] eth0 ", rows[1]), rows[1]
    assert "node1:" not in err and "=>" not in err     # one node: the labels as saved
    assert "client/eth0 > node1/vethclient > cbr0 > eth0" in err


def test_filters_apply_to_saved_events(tmp_path):
    a, b = two_node_files(tmp_path, 0)
    _s, out, _e = tell(a, b, args=["-P", "41001"])
    assert len(out.splitlines()) == 1 + 10
    _s, out, _e = tell(a, b, args=["-N", "server2", "-N", "301"])
    assert len(out.splitlines()) == 1 + 6
    _s, out, _e = tell(a, b, args=["--proto", "tcp"])
    assert len(out.splitlines()) == 1


def test_filter_expression_on_saved_headers(tmp_path):
    pytest.importorskip("ctypes")
    a, b = two_node_files(tmp_path, 0)
    _s, out, _e = tell(a, b, args=["udp and src port 41002 and ip[8] == 63"])
    assert len(out.splitlines()) == 1 + 4     # ttl 63: node1/eth0 x2, node2/eth0 x2


def test_filter_expression_on_a_saved_tunnel_event_sees_both_headers():
    """As live: an encapsulated event matches by its inner packet or its outer one."""
    from skbtracer_lib.program.pcapfilter import Expression
    from skbtracer_lib.replay.packets import ExpressionJudge
    vxlan = {"family": 4, "l4proto": 17, "saddr": "10.244.1.2", "daddr": "10.244.2.2", "sport": 41000,
             "dport": 5353, "ttl": 63, "len": 60,
             "tunnel": {"type": "vxlan", "vni": 1, "saddr": "192.168.0.1", "daddr": "192.168.0.2",
                        "sport": 50000, "dport": 8472}}
    ipip = dict(vxlan, tunnel={"type": "ipip", "vni": None, "saddr": "192.168.0.1",
                               "daddr": "192.168.0.2", "sport": None, "dport": None})

    def judge(text, o):
        return ExpressionJudge(Expression(text, live=False))(o)

    for text in ("udp dst port 5353", "udp dst port 8472", "dst host 192.168.0.2", "dst host 10.244.2.2",
                 "udp[8] == 8 and udp[14] == 1"):   # VXLAN's flags and VNI
        assert judge(text, vxlan), text
    for text in ("udp port 4789", "tcp", "ip proto 4", "host 192.168.0.3"):
        assert not judge(text, vxlan), text
    assert judge("ip proto 4 and dst host 192.168.0.2", ipip) and judge("udp port 5353", ipip)
    assert not judge("udp port 8472", ipip)


# ---------------------------------------------------------------- latency

def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert latency.percentile(values, 0.5) == 50
    assert latency.percentile(values, 0.99) == 99
    assert latency.percentile([7], 0.99) == 7
    assert latency.percentile([], 0.5) == 0


def test_hop_deltas_and_the_slowest_hop(tmp_path):
    one, _two = request(1000, 41000, 1_000_000_000)
    one[3].ts_ns += 500_000                    # queueing at node1/eth0
    one[4].ts_ns += 500_000
    a = write_run(tmp_path / "a.jsonl", "node1", one)
    status, out, err = tell(a, args=["--latency", "--json", "--width", "1000"])
    assert status == 0
    time_line = [line for line in err.splitlines() if line.startswith("TIME: ")][0]
    assert time_line.endswith("540.0 us in the network; slowest hop "
                              "netif_receive_skb(node1/cbr0) -> net_dev_queue(node1/eth0), "
                              "510.0 us"), time_line
    summary = [json.loads(x) for x in out.splitlines() if '"summary"' in x][0]
    assert [h["ns"] for h in summary["hops"]] == [10_000, 10_000, 510_000, 10_000]
    assert summary["span_ns"] == 540_000 and summary["slowest_hop"]["ns"] == 510_000
    assert "MEDIAN" in err and "P99" in err


def test_latency_table_counts_over_packets(tmp_path):
    a, b = two_node_files(tmp_path, 0)
    cfg = config.parse_args(["-r", str(a), str(b)])
    runs = replay_read.read_files(cfg.read, lambda text: None)
    session = replay_session.saved_session(cfg, runs, out=io.StringIO(), err=io.StringIO())
    session.run()
    told = session.last_story
    rows = latency.hop_table_rows(told)
    wire = [r for r in rows if r[0].startswith("net_dev_start_xmit") and "=>" not in r[0]
            and r[1].startswith("netif_rx(node2")]
    assert wire and wire[0][2] == 3 and wire[0][3] == wire[0][5] == 1   # 1 ns after the estimate
    assert all(r[2] == 3 for r in rows)


def test_merge_estimate_directly():
    a = {("k",): [100, 110, 64]}
    b = {("k",): [3_700_000_200, 3_700_000_300, 63]}
    est = merge.estimate(a, b, "node2")
    assert est.ns == 3_700_000_200 - 110 - 1 and est.matched == 1


def test_functions_of_all_are_known_to_the_story_again(tmp_path):
    """A start object's "functions" (--all/--func) name the probes -r tells
    as extra functions, as the live run did: one named like a story point
    is only a path row (story_name's "()")."""
    probe_names = TRACEPOINTS + ["tpacket_rcv", "veth_xmit"]
    path = tmp_path / "all.json"
    path.write_text(jsonl.dumps(jsonl.start_object(
        "kprobe", node="n1", run_id="r1", probes=probe_names, attached=probe_names,
        modes=["route"], iptable_traced=False, functions=["tpacket_rcv", "veth_xmit"])) + "\n")
    cfg = config.parse_args(["-r", str(path)])
    session = replay_session.saved_session(cfg, replay_read.read_files(cfg.read, print))
    session.source.rebuilder.probe_names[:] = probe_names
    names, visible, extra = session.source.loaded.info.story_probes()
    assert names == TRACEPOINTS + ["tpacket_rcv()", "veth_xmit"]
    assert {"tpacket_rcv()", "veth_xmit"} <= visible and extra == {"tpacket_rcv()", "veth_xmit"}
    # without the field (a run without --all, or an older file): none extra
    path.write_text(path.read_text().replace(', "functions": ["tpacket_rcv", "veth_xmit"]', ""))
    session = replay_session.saved_session(cfg, replay_read.read_files(cfg.read, print))
    session.source.rebuilder.probe_names[:] = probe_names
    assert session.source.loaded.info.story_probes()[2] == set()


def test_saved_conntrack_reads_back_rows_story_and_ct_state(tmp_path):
    """-r: the saved "ct" objects give the same --ct rows, the story's CT column and
    --ct-state's selection as the live run."""
    ct = dict(ct=0xFFFF888012345602, ct_known=1, ct_l4proto=17, ct_status=0x28,
              ct_orig_saddr="10.244.1.2", ct_orig_sport=41000, ct_orig_daddr="10.96.0.20",
              ct_orig_dport=53, ct_reply_saddr="10.244.2.3", ct_reply_sport=9000,
              ct_reply_daddr="10.244.1.2", ct_reply_dport=41000)
    one, _two = request(1000, 41000, 1_000_000_000)
    events = [e if i < 2 else Event(encode(**dict({n: getattr(e, n) for n in Event.__slots__},
                                                  **ct)))
              for i, e in enumerate(one)]       # conntrack saw it from cbr0 on
    a = write_run(tmp_path / "a.jsonl", "node1", events)
    _s, plain, err = tell(a, args=["--story-per-packet", "--width", "300"])
    assert " ct=" not in plain
    assert "NEW -> DNAT 10.96.0.20:53 => 10.244.2.3:9000" in err, err
    _s, out, _e = tell(a, args=["--ct"])
    rows = out.splitlines()[1:]
    assert [r.endswith(" ct=NEW dnat 10.96.0.20:53=>10.244.2.3:9000") for r in rows] == \
        [False, False, True, True, True]
    _s, out, _e = tell(a, args=["--ct-state", "new"])
    assert len(out.splitlines()) == 1 + 3
    _s, out, _e = tell(a, args=["--ct-state", "inv"])
    assert len(out.splitlines()) == 1 + 2


def test_saved_ct_mark_and_zone_select_as_the_kernel_does(tmp_path):
    """-r --ct-mark/--ct-zone on the saved "ct" objects: the rows of the marked (zoned)
    connection only; rows without an entry, or whose mark/zone was not read, never match."""
    def conn(address, mark, zone, known=7):
        return dict(ct=address | 2, ct_known=known, ct_l4proto=17, ct_mark=mark, ct_zone=zone)
    marked, zoned, plain = (request(1000 + i, 41000 + i, (i + 1) * 1_000_000_000)[0]
                            for i in range(3))
    unread = request(1003, 41003, 4_000_000_000)[0]     # 5.10: no nf_conn fields

    def with_ct(events, ct):
        return [e if i < 2 else Event(encode(**dict({n: getattr(e, n) for n in Event.__slots__},
                                                    **ct)))
                for i, e in enumerate(events)]      # conntrack saw it from cbr0 on
    events = (with_ct(marked, conn(0xFFFF888000000100, 0x12A, 0))
              + with_ct(zoned, conn(0xFFFF888000000200, 0, 7))
              + with_ct(plain, conn(0xFFFF888000000300, 0, 0))
              + with_ct(unread, conn(0xFFFF888000000400, 0, 0, known=1)))
    a = write_run(tmp_path / "a.jsonl", "node1", events)

    def sports(args):
        _s, out, _e = tell(a, args=args + ["--json", "--no-summary"])
        objects = [json.loads(line) for line in out.splitlines()]
        return sorted(o["sport"] for o in objects if o["type"] == "event")
    assert sports([]) == sorted([41000, 41001, 41002, 41003] * 5)
    assert sports(["--ct-mark", "0x2a/0xff"]) == [41000] * 3
    assert sports(["--ct-mark", "0x2a"]) == []
    assert sports(["--ct-zone", "7"]) == [41001] * 3
    assert sports(["--ct-zone", "0"]) == [41000] * 3 + [41002] * 3
    assert sports(["--ct-mark", "0", "--ct-zone", "0"]) == [41002] * 3
