"""--why (issue 26): the ICMP errors and TCP resets the stack sends back
because of a packet, as rows on the packet that caused them, and the IPv4
routing decision each packet took, in its rows, its story, its JSON and
through -r. One tracer (a filter expression for the lab's pod subnet: the
filters are the causing packet's) over the routing lab's scenarios
(testbed/routing.py). What was sent back is judged against what the
sender's eth0 actually got back (tcpdump, Shape.run):

- UDP to a closed port of pod-b: ICMP port unreachable from pod-b;
- a TCP SYN to a closed port of pod-b: a reset;
- a datagram with TTL 1 through the router: ICMP time exceeded;
- a DF datagram bigger than the far link's MTU: ICMP frag needed (with the
  MTU where a kprobe read it: the tracepoint gives none).

The routing decisions (router: `ip rule from <pod-b> lookup 100`, a
blackhole, an unreachable and a prohibit route, no default route) are
judged against `ip route get fibmatch` in the router (RoutingLab.route_get);
two senders pinned to one CPU check that each of their packets gets its own
decision, not the other flow's.

Runs on: the host (tracepoints icmp:icmp_send, tcp:tcp_send_reset) and the
guests (5.10: kprobes on __icmp_send and tcp_v4_send_reset; 6.1: the
icmp_send tracepoint and the reset kprobes; 6.12: both tracepoints); the
routing decisions from fib:fib_table_lookup on all of them (with a kprobe on
__icmp_send, its kretprobe ends ICMP's own lookups of the packet's way)."""

import dataclasses
import json
import subprocess

import pytest

from testbed.routing import RoutingLab
from testbed.tracer import PYTHON, SKBTRACER, TracerRun

# scenario -> (its source port, the story's words, the functions its row may name)
WANTED = {
    "port-unreachable": (42611, "ICMP port unreachable sent back", {"icmp_send", "__icmp_send"}),
    "tcp-reset": (42612, "TCP reset sent back", {"tcp_send_reset", "tcp_v4_send_reset"}),
    "ttl-exceeded": (42613, "ICMP TTL exceeded sent back", {"icmp_send", "__icmp_send"}),
    "frag-needed": (42614, "ICMP frag needed", {"icmp_send", "__icmp_send"}),
}
# routing scenarios -> their source port; the judge: route_get, the table of an
# error route from the lab's facts (ip route get does not tell it)
ROUTED = {"route-main": 42621, "route-policy": 42622, "blackhole": 42623, "prohibit": 42624,
          "unreachable": 42625, "no-route": 42626}
PINNED = "two-flows-one-cpu"
# what came back (Shape's reply kinds) -> the row's ICMP type and code; None: a reset
REPLY_TYPE_CODE = {("icmp", 3, 3): (3, 3), ("icmp", 11, 0): (11, 0), ("icmp", 3, 4): (3, 4),
                   ("rst",): None}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """The lab's scenarios under one tracer: (lab, {name: Outcome}, the
    tracer, its JSON lines' path); the routing scenarios' outcomes also
    hold the judge's answer (judged[name])."""
    json_path = tmp_path_factory.mktemp("why") / "why.jsonl"
    with RoutingLab() as lab:
        outcomes = {}
        netns = [arg for role in RoutingLab.ROLES for arg in ("-N", lab.ns[role])]
        with TracerRun(["--why", "--route", "--drop", "--json=%s" % json_path,
                        "--story-per-packet", "--width", "1000"] + netns
                       + ["--", "net 10.244.1.0/24"]) as run:
            for name, sport in [(n, w[0]) for n, w in WANTED.items()] + list(ROUTED.items()):
                sc = lab.scenario(name)
                sc = dataclasses.replace(sc, options=dict(sc.options, sport=sport))
                outcomes[name], _caps = lab.run(sc)
            outcomes[PINNED], _caps = lab.run(lab.scenario(PINNED))
        judged = {name: lab.route_get(lab.scenario(name).dst, lab.pods[lab.scenario(name).src].ip4)
                  for name in ROUTED}
        yield lab, dict(outcomes, judged=judged), run, json_path


def story_line(stderr, sport):
    """The story's row of the packet from pod-a's port sport."""
    found = [line for line in stderr.splitlines() if ":%d->" % sport in line
             and line.lstrip()[:1].isdigit()]
    assert len(found) == 1, stderr
    return found[0]


def why_rows(rows, sport):
    return [r for r in rows if ":%d->" % sport in r.pkt and r.function in
            {f for _s, _w, functions in WANTED.values() for f in functions}]


@pytest.mark.parametrize("name", list(WANTED))
def test_what_came_back_is_the_row_on_the_packet_that_caused_it(traced, name):
    lab, outcomes, run, _path = traced
    sport, _words, functions = WANTED[name]
    outcome = outcomes[name]
    assert outcome.mismatches() == [], "the lab itself: %s" % outcome.mismatches()
    assert run.returncode == 0, run.stderr
    rows = why_rows(run.rows, sport)
    assert len(rows) == 1, "\n".join(r.line for r in run.rows)
    row = rows[0]
    assert row.function in functions
    # the causing packet's own header: pod-a's datagram/SYN, not the error
    dst = lab.scenario(name).dst
    assert row.pkt.endswith("%s:%d->%s:%d" % (lab.pods["pod-a"].ip4, sport, dst,
                                               lab.scenario(name).port)), row.line
    kinds = {_kind(reply) for reply in outcome.replies}
    assert len(kinds) == 1, kinds
    expected = REPLY_TYPE_CODE[kinds.pop()]
    trace = row.trace.split(" route=")[0]   # the routing decision the row took: below
    if expected is None:
        assert trace == row.function and row.pkt.startswith("T_SYN:"), row.line
    else:
        info = "%s type=%d code=%d" % ((row.function,) + expected)
        mtu = outcome.replies[0].outer.icmp_mtu      # frag needed: the MTU pod-a was told
        assert trace in (info, "%s mtu=%s" % (info, mtu)), row.line


def _kind(reply):
    h = reply.outer
    return ("rst",) if h.tcp_flags is not None else ("icmp", h.icmp_type, h.icmp_code)


@pytest.mark.parametrize("name", list(WANTED))
def test_the_story_says_what_was_sent_back(traced, name):
    _lab, outcomes, run, _path = traced
    sport, words, _functions = WANTED[name]
    line = story_line(run.stderr, sport)
    assert words in line
    if name == "frag-needed":       # the MTU where the row has it: the one pod-a was told
        mtu = outcomes[name].replies[0].outer.icmp_mtu
        row = why_rows(run.rows, sport)[0]
        told = "ICMP frag needed (MTU %d) sent back" % mtu
        assert (told in line) if "mtu=" in row.trace else ("ICMP frag needed sent back" in line)


def test_json_carries_the_fields_and_r_tells_the_same(traced):
    _lab, _outcomes, run, path = traced
    events = [json.loads(line) for line in path.read_text().splitlines()]
    # what was sent back; a first packet's wait for its neighbour (test_neigh.py) aside
    why = [e for e in events if e.get("type") == "event" and e["kind"] == "why"
           and e["why"]["sent"] != "neigh_queued"]
    by_sport = {e["sport"]: e["why"] for e in why}
    # and the ICMP errors of the routing scenarios' error routes
    assert set(by_sport) == {sport for sport, _w, _f in WANTED.values()} | {
        ROUTED[name] for name in ("prohibit", "unreachable", "no-route")}, why
    assert by_sport[WANTED["tcp-reset"][0]]["sent"] == "tcp_reset"
    port = by_sport[WANTED["port-unreachable"][0]]
    assert (port["sent"], port["icmp_type"], port["icmp_code"]) == ("icmp", 3, 3)
    assert port["text"] == "ICMP port unreachable sent back"
    ttl = by_sport[WANTED["ttl-exceeded"][0]]
    assert (ttl["icmp_type"], ttl["icmp_code"]) == (11, 0)
    # only --why rows have the key
    assert not any("why" in e for e in events if e.get("type") == "event" and e["kind"] != "why")
    replay = subprocess.run([PYTHON, SKBTRACER, "-r", str(path), "--story-per-packet",
                             "--width", "1000"], capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    for sport, words, _functions in WANTED.values():
        assert words in story_line(replay.stderr, sport)
        row = why_rows(run.rows, sport)[0]
        assert row.line.split("]", 1)[1] in replay.stdout, replay.stdout


def events_of(path):
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("type") == "event"]


def router_rows(lab, events, **header):
    """The router's rows that took a routing decision, of packets with the header fields given."""
    router = lab.ns_inode["router"]
    return [e for e in events if e["netns"] == router and e.get("route")
            and all(e[k] == v for k, v in header.items())]


def decision(route):
    """What a decision says (iif aside: ICMP's own lookups of the packet's way, made before
    the icmp:icmp_send tracepoint's row takes the newest, are output routes)."""
    return {k: v for k, v in route.items() if k != "iif"}


def expected_words(lab, name, judged):
    """The story's words for the router's decision, from `ip route get`."""
    facts = lab.scenario(name).facts
    kind = judged["type"]
    if kind == "unicast":
        return "routed by table %s dev %s" % (judged["table"], judged["oif"])
    if kind == "no route":
        return "no route in table main"     # the last table the rules searched
    return "%s route in table %s" % (kind, facts["table"])


@pytest.mark.parametrize("name", list(ROUTED))
def test_the_routing_decision_is_the_one_ip_route_get_gives(traced, name):
    lab, outcomes, run, path = traced
    assert outcomes[name].mismatches() == [], "the lab itself: %s" % outcomes[name].mismatches()
    judged = outcomes["judged"][name]
    sc = lab.scenario(name)
    rows = router_rows(lab, events_of(path), saddr=lab.pods[sc.src].ip4, sport=ROUTED[name],
                       dport=sc.port)
    assert rows, "no decision in the router"
    route = rows[0]["route"]
    assert all(decision(r["route"]) == decision(route) for r in rows), \
        [(r["func"], r["kind"], r["route"]) for r in rows]
    result = judged["type"]
    assert route["result"] == result, (route, judged)
    if result == "unicast":
        assert (route["table"], route["dev"], route["gateway"]) == (judged["table"], judged["oif"],
                                                                   None), (route, judged)
    elif result != "no route":
        assert route["table"] == sc.facts["table"], route
    words = expected_words(lab, name, judged)
    assert route["text"] == words
    line = story_line(run.stderr, ROUTED[name])
    assert words in line, line
    if name == "prohibit":
        assert "%s, ICMP admin prohibited sent back" % words in line, line
    # the row that took it says it too
    assert any(" route=%s:%s" % (route["table"], result.replace(" ", "_")) in r.line
               for r in run.rows if ":%d->" % ROUTED[name] in r.pkt), run.stdout


def test_two_flows_on_one_cpu_each_packet_its_own_decision(traced):
    lab, outcomes, _run, path = traced
    outcome = outcomes[PINNED]
    assert outcome.mismatches() == [], "the lab itself: %s" % outcome.mismatches()
    sc = lab.scenario(PINNED)
    count, c = sc.options["count"], lab.pods["pod-c"]
    fixed = set(ROUTED.values()) | {sport for sport, _w, _f in WANTED.values()}
    events = [e for e in events_of(path) if e["sport"] not in fixed]
    router = lab.ns_inode["router"]
    order = [e["saddr"] for e in sorted(events, key=lambda e: e["ktime_ns"])
             if e["netns"] == router and e.get("route") and e["daddr"] == c.ip4]
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert switches >= 2, "the two flows did not interleave: %s" % order    # else no test
    for pod, table in sc.facts["routes"].items():
        rows = router_rows(lab, events, saddr=pod, daddr=c.ip4, dport=sc.port)
        assert len({r["ip_id"] for r in rows}) == count, rows      # each datagram its own
        judged = lab.route_get(c.ip4, pod)
        assert judged["table"] == table
        assert {(r["route"]["table"], r["route"]["result"], r["route"]["dev"]) for r in rows} == \
            {(table, "unicast", judged["oif"])}


def test_r_tells_the_decisions_again(traced):
    lab, outcomes, run, path = traced
    replay = subprocess.run([PYTHON, SKBTRACER, "-r", str(path), "--story-per-packet",
                             "--width", "1000"], capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    for name, sport in ROUTED.items():
        words = expected_words(lab, name, outcomes["judged"][name])
        assert words in story_line(replay.stderr, sport)
    routed = [r for r in run.rows if " route=" in r.trace]
    assert routed
    for row in routed:
        assert row.line.split("]", 1)[1] in replay.stdout, row.line
