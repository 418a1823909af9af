"""IPv6 extension headers (issue 24): rows name the upper protocol and its ports, walked past
hop-by-hop, routing, fragment and destination-options headers, as tcpdump's capture parsed by
dpkt (testbed/packets.py) shows them on pod-a's eth0. One tracer (-N pod-a -N pod-b, no address
filter: an MLD report leaves from a link-local address) over the routing lab's four IPv6
scenarios (testbed/routing.py):

- joining a group sends an MLDv2 report: hop-by-hop (router alert), then ICMPv6 type 143;
- a 3000-byte datagram over a 1500 MTU: three fragments, the first with UDP's ports, the others
  with none (the upper protocol still UDP);
- a destination options header, and a segment routing header, before UDP.

Runs on: the host (tracepoints) and guest-6.1 (kprobes)."""

import dataclasses
import json
import time

import pytest

from testbed.routing import RoutingLab
from testbed.tracer import TracerRun

SCENARIOS = {"mld-hop-by-hop": 44601, "ipv6-fragments": 44602, "ipv6-dstopts": 44603,
             "ipv6-routing": 44604}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    json_path = str(tmp_path_factory.mktemp("ipv6ext") / "ext.jsonl")
    with RoutingLab() as lab:
        netns = [arg for role in ("pod-a", "pod-b") for arg in ("-N", lab.ns[role])]
        sent = {}
        with TracerRun(["--json=" + json_path, "--width", "1000"] + netns) as run:
            for name, sport in SCENARIOS.items():
                sc = lab.scenario(name)
                sc = dataclasses.replace(sc, options=dict(sc.options, sport=sport))
                start = time.time_ns()
                outcome, caps = lab.run(sc)
                sent[name] = (sc, outcome, [p.outer for p in caps[("pod-a", "eth0")].packets
                                            if p.outer.dst == sc.dst], (start, time.time_ns()))
        pod_a = lab.ns["pod-a"]
    with open(json_path) as f:
        events = [o for o in map(json.loads, f) if o.get("type") == "event"]
    return run, events, sent, pod_a


def _upper(proto, sport, dport, icmp_type):
    return (proto, sport or 0, dport or 0, icmp_type)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_rows_name_the_upper_protocol_past_extension_headers(traced, name):
    run, events, sent, pod_a = traced
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    sc, outcome, packets, (start, end) = sent[name]
    assert outcome.mismatches() == [], "the lab itself: %s" % outcome.mismatches()
    assert packets and all(p.ext_headers == sc.facts["ext_headers"] for p in packets), packets
    wire = {_upper(p.proto, p.sport, p.dport, p.icmp_type) for p in packets}
    rows = [o for o in events if o["netns_name"] == pod_a and o["ifname"] == "eth0"
            and o["daddr"] == sc.dst and o["kind"] == "route" and start <= o["time_ns"] <= end]
    seen = {_upper(o["l4proto"], o["sport"], o["dport"], o["icmp_type"]) for o in rows}
    assert rows and seen == wire, (seen, wire)
    assert {o["l4proto"] for o in rows} == {sc.facts["upper"]}
    if name == "ipv6-fragments":       # the first fragment has the ports, the others none
        assert len(wire) == 2 and (17, 0, 0, None) in wire
