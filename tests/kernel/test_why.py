"""--why (issue 26, first slice): the ICMP errors and TCP resets the stack
sends back because of a packet, as rows on the packet that caused them, in
its story, its JSON and through -r. One tracer (-H pod-a: the filters are
the causing packet's) over four scenarios of the routing lab
(testbed/routing.py), each judged against what pod-a's eth0 actually got
back (tcpdump, Shape.run):

- UDP to a closed port of pod-b: ICMP port unreachable from pod-b;
- a TCP SYN to a closed port of pod-b: a reset;
- a datagram with TTL 1 through the router: ICMP time exceeded;
- a DF datagram bigger than the far link's MTU: ICMP frag needed (with the
  MTU where a kprobe read it: the tracepoint gives none).

Runs on: the host (tracepoints icmp:icmp_send, tcp:tcp_send_reset) and the
guests (5.10: kprobes on __icmp_send and tcp_v4_send_reset; 6.1: the
icmp_send tracepoint and the reset kprobes; 6.12: both tracepoints)."""

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
# what came back (Shape's reply kinds) -> the row's ICMP type and code; None: a reset
REPLY_TYPE_CODE = {("icmp", 3, 3): (3, 3), ("icmp", 11, 0): (11, 0), ("icmp", 3, 4): (3, 4),
                   ("rst",): None}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """The lab's four scenarios under one tracer: (lab, {name: Outcome},
    the tracer, its JSON lines' path)."""
    json_path = tmp_path_factory.mktemp("why") / "why.jsonl"
    with RoutingLab() as lab:
        a = lab.pods["pod-a"].ip4
        outcomes = {}
        netns = [arg for role in RoutingLab.ROLES for arg in ("-N", lab.ns[role])]
        with TracerRun(["-H", a, "--why", "--route", "--drop", "--json=%s" % json_path,
                        "--story-per-packet", "--width", "1000"] + netns) as run:
            for name, (sport, _words, _functions) in WANTED.items():
                sc = lab.scenario(name)
                sc = dataclasses.replace(sc, options=dict(sc.options, sport=sport))
                outcomes[name], _caps = lab.run(sc)
        yield lab, outcomes, run, json_path


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
    if expected is None:
        assert row.trace == row.function and row.pkt.startswith("T_SYN:"), row.line
    else:
        info = "%s type=%d code=%d" % ((row.function,) + expected)
        mtu = outcome.replies[0].outer.icmp_mtu      # frag needed: the MTU pod-a was told
        assert row.trace in (info, "%s mtu=%s" % (info, mtu)), row.line


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
    why = [e for e in events if e.get("type") == "event" and e["kind"] == "why"]
    by_sport = {e["sport"]: e["why"] for e in why}
    assert set(by_sport) == {sport for sport, _w, _f in WANTED.values()}, why
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
