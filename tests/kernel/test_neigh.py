"""--why (issue 26): the neighbour a packet waited for, and IPv6's routing
decisions. One tracer (--why --route --drop, pod-a's and the router's
namespaces, `udp port 9000`) over the routing lab's scenarios
(testbed/routing.py):

- neigh-failed / neigh-failed6: pod-a sends to an address on its subnet
  that nobody has; ARP (ND) is tried mcast_solicit times, retrans_time_ms
  apart (lowered in pod-a), then the entry is FAILED and the queued
  datagram dropped. Its queueing is a row naming the neighbour, and its drop
  row the neighbour, the state FAILED and the wait, judged against the
  kernel's own settings (mcast_solicit x retrans_time) and `ip neigh`.
- neigh-queuefull: five datagrams with a 1-byte queue: four pushed out
  (NEIGH_QUEUEFULL), the last dropped when the entry fails.
- route6-main, blackhole6, prohibit6: each IPv6 decision (table, prefix,
  gateway, device, result) judged against `ip -6 route get fibmatch`.
- route-main after the router's neighbours towards pod-c were flushed: the
  router queues pod-a's datagram until pod-c answers ARP; the story tells
  the wait up to the packet's next row.
- rp-filter: pod-c sends from 10.244.1.77, which the router routes back via
  cni0, not pod-c's veth (rp_filter=1): the IP_RPFILTER drop row tells
  rp_filter's own lookup, judged against `ip route get fibmatch`.

Runs on: the host (tracepoints) and the guests (the same tracepoints beside
the kprobes: neigh:neigh_event_send_done, fib6:fib6_table_lookup,
fib:fib_table_lookup)."""

import json
import re
import subprocess

import pytest
from conftest import BACKEND

from testbed.routing import NEIGH_RETRANS_MS, SPOOFED, SUBNET6, RoutingLab
from testbed.tracer import PYTHON, SKBTRACER, TracerRun

NEIGHBOURS = ("neigh-failed", "neigh-failed6", "neigh-queuefull")
ROUTED6 = ("route6-main", "blackhole6", "prohibit6")
RESOLVED = "route-main"
RPF = "rp-filter"
# where a packet queued for its neighbour goes on when it resolves
TRANSMIT = {"tracepoint": ("net_dev_queue", "net_dev_start_xmit"), "kprobe": ("__dev_queue_xmit",)}
PROTOCOL = {"neigh-failed": "ARP", "neigh-failed6": "ND", "neigh-queuefull": "ARP"}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(lab, {name: Outcome}, the tracer, its JSON events, {name: judge's route})."""
    json_path = tmp_path_factory.mktemp("neigh") / "neigh.jsonl"
    with RoutingLab() as lab:
        outcomes, judged = {}, {}
        with TracerRun(["--why", "--route", "--drop", "--json=%s" % json_path,
                        "--story-per-packet", "--width", "1000", "-N", lab.ns["pod-a"],
                        "-N", lab.ns["router"], "--", "udp port 9000"]) as run:
            for name in NEIGHBOURS + ROUTED6:
                outcomes[name], _caps = lab.run(lab.scenario(name))
            states = {name: lab.neighbour("pod-a", lab.scenario(name).dst) for name in NEIGHBOURS}
            # the router forwards pod-a's datagram to pod-c, whose neighbour entry is gone: it
            # waits for ARP in the router's softirq, and goes on when pod-c answers
            lab.exec("router", ["ip", "neigh", "flush", "dev", lab.pods["pod-c"].host_ifname])
            outcomes[RESOLVED], _caps = lab.run(lab.scenario(RESOLVED))
            outcomes[RPF], _caps = lab.run(lab.scenario(RPF))
        for name in ROUTED6:
            dst = lab.scenario(name).dst
            judged[name] = {role: route_get(lab, role, dst, lab.pods["pod-a"].ip6)
                            for role in ("pod-a", "router")}
        # rp_filter's lookup: the way to the source, as the router's own output route
        back = json.loads(lab.exec("router", ["ip", "-j", "route", "get", "fibmatch",
                                              SPOOFED]).stdout)[0]
        judged[RPF] = {"table": back.get("table", "main"), "type": back.get("type", "unicast"),
                       "oif": back.get("dev")}
        solicit = int(lab.exec("pod-a", ["sysctl", "-n", "net.ipv4.neigh.eth0.mcast_solicit"])
                      .stdout)
        events = [e for e in map(json.loads, json_path.read_text().splitlines())
                  if e.get("type") == "event"]
        yield lab, dict(outcomes, states=states, solicit=solicit, judged=judged), run, events, \
            json_path


def route_get(lab, role, dst, src):
    """`ip -6 route get fibmatch` in role (the router: as pod-a's packet arriving on cni0):
    the route's prefix, table, type, gateway and device, or {"type": ...} of an error route."""
    argv = ["ip", "-6", "-j", "route", "get", "fibmatch", dst]
    argv += ["from", src, "iif", "cni0"] if role == "router" else []
    proc = lab.exec(role, argv, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()}
    route = json.loads(proc.stdout)[0]
    prefix = route["dst"] if route["dst"] != "default" else "::/0"
    return {"prefix": prefix if "/" in prefix else prefix + "/128",
            "table": route.get("table", "main"), "type": route.get("type", "unicast"),
            "gateway": route.get("gateway"), "dev": route.get("dev")}


def rows_to(events, dst, netns=None):
    return [e for e in events if e["daddr"] == dst and (netns is None or e["netns"] == netns)]


@pytest.mark.parametrize("name", ("neigh-failed", "neigh-failed6"))
def test_a_failed_neighbour_names_the_address_the_wait_and_the_state(traced, name):
    lab, outcomes, run, events, _path = traced
    sc = lab.scenario(name)
    assert outcomes["states"][name] == "FAILED", "the lab itself: %s" % outcomes["states"]
    assert run.returncode == 0, run.stderr
    rows = rows_to(events, sc.dst, lab.ns_inode["pod-a"])
    queued = [e for e in rows if e["kind"] == "why"
              and e["why"]["sent"] == "neigh_queued"]
    assert len(queued) == 1, rows
    assert queued[0]["neigh"]["address"] == sc.dst
    assert queued[0]["neigh"]["state"] == "INCOMPLETE"
    assert queued[0]["neigh"]["protocol"] == PROTOCOL[name]
    # its decision rides on the packet's first row: this one (tracepoints), ip_output (kprobes)
    decided = [e for e in rows if e["skb"] == queued[0]["skb"] and e.get("route")]
    assert decided and decided[0]["route"]["result"] == "unicast", rows
    (drop,) = [e for e in rows if e["kind"] == "drop" and e.get("neigh")]
    assert drop["skb"] == queued[0]["skb"]
    neigh = drop["neigh"]
    assert (neigh["address"], neigh["state"], neigh["dev"]) == (sc.dst, "FAILED", "eth0")
    # the kernel fails the entry after mcast_solicit probes, retrans_time apart
    expected_us = outcomes["solicit"] * NEIGH_RETRANS_MS * 1000
    assert expected_us * 0.8 <= neigh["waited_us"] <= expected_us * 2.5, neigh
    if name == "neigh-failed":
        assert drop["drop"]["reason"] == "NEIGH_FAILED"
    story = [line for line in run.stderr.splitlines()
             if sc.dst in line and line.startswith("DROPPED")]
    assert story, run.stderr
    words = re.compile(r"waited [\d.]+ m?s for %s %s on eth0: FAILED"
                       % (PROTOCOL[name], re.escape(sc.dst)))
    assert words.search(story[0]), story[0]
    assert story[0].count("waited") == 1, story[0]      # the queueing row's wait is the drop's


def test_a_full_queue_names_each_datagram_pushed_out(traced):
    lab, outcomes, _run, events, _path = traced
    sc = lab.scenario("neigh-queuefull")
    drops = [e for e in rows_to(events, sc.dst, lab.ns_inode["pod-a"]) if e["kind"] == "drop"]
    reasons = [e["drop"]["reason"] for e in drops]
    assert reasons.count("NEIGH_QUEUEFULL") == sc.facts["queuefull"], reasons
    assert reasons.count("NEIGH_FAILED") == 1, reasons
    for e in drops:
        assert e["neigh"]["address"] == sc.dst, e
        assert e["neigh"]["state"] == ("FAILED" if e["drop"]["reason"] == "NEIGH_FAILED"
                                       else "INCOMPLETE"), e


@pytest.mark.parametrize("name", ROUTED6)
def test_ipv6_decisions_are_the_ones_ip_route_get_gives(traced, name):
    lab, outcomes, _run, events, _path = traced
    sc = lab.scenario(name)
    assert outcomes[name].mismatches() == [], "the lab itself: %s" % outcomes[name].mismatches()
    judged = outcomes["judged"][name]
    for role in ("pod-a", "router") if name != "route6-main" else ("pod-a",):
        decided = [e["route"] for e in rows_to(events, sc.dst, lab.ns_inode[role])
                   if e.get("route")]
        assert decided, (role, rows_to(events, sc.dst))
        route = decided[0]
        expected = judged[role]
        if "error" in expected:     # an error route: ip route get names no table
            assert route["result"] == sc.facts["route"]["type"], route
            assert route["prefix"] == sc.facts["route"]["prefix"], route
            assert route["table"] == sc.facts["table"]
            continue
        assert (route["result"], route["prefix"], route["table"], route["dev"],
                route["gateway"]) == (expected["type"], expected["prefix"], expected["table"],
                                      expected["dev"], expected["gateway"]), (route, expected)
    if name == "route6-main":
        assert expected["prefix"] == SUBNET6


def test_json_carries_the_fields_and_r_tells_the_same(traced):
    lab, _outcomes, run, events, path = traced
    assert not any("neigh" in e for e in events if e["daddr"] not in
                   {lab.scenario(n).dst for n in NEIGHBOURS + (RESOLVED,)})
    replay = subprocess.run([PYTHON, SKBTRACER, "-r", str(path), "--story-per-packet",
                             "--width", "1000"], capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    for name in NEIGHBOURS + ROUTED6:
        told = [line for line in run.stdout.splitlines() if lab.scenario(name).dst + ":" in line
                and (" neigh=" in line or " route=" in line)]
        assert told, name
        for line in told:
            assert line.split("]", 1)[1] in replay.stdout, line
    stories = sorted(line for line in run.stderr.splitlines() if line.startswith("DROPPED"))
    assert stories == sorted(line for line in replay.stderr.splitlines()
                             if line.startswith("DROPPED"))


def test_a_resolved_wait_is_told_until_the_packet_went_on(traced):
    """A packet the router queued while pod-c's entry resolved: the story tells the wait, no
    state, no drop."""
    lab, outcomes, run, events, _path = traced
    assert outcomes[RESOLVED].mismatches() == [], outcomes[RESOLVED].mismatches()
    failing = {lab.scenario(n).dst for n in NEIGHBOURS}
    queued = [e for e in events if e["kind"] == "why" and e.get("neigh")
              and e["neigh"]["address"] not in failing]
    assert [(e["netns"], e["neigh"]["address"]) for e in queued] == [
        (lab.ns_inode["router"], lab.pods["pod-c"].ip4)], queued
    for e in queued:
        # (kprobes: skb_clone's rows are neigh_probe's clones of it for ARP's solicitations)
        later = [a for a in events if a["skb"] == e["skb"] and a["ktime_ns"] > e["ktime_ns"]
                 and a["kind"] != "why" and a["func"] != "skb_clone"]
        assert later and later[0]["func"] in TRANSMIT[BACKEND], later
        words = re.compile(r"waited [\d.]+ (us|ms|s) for %s %s on %s(?!:)" % (
            e["neigh"]["protocol"], re.escape(e["neigh"]["address"]), e["ifname"]))
        port = "]:%d->" % e["sport"] if e["family"] == 6 else ":%d->" % e["sport"]
        story = [line for line in run.stderr.splitlines() if port in line
                 and words.search(line)]
        assert story, (e["neigh"], [line for line in run.stderr.splitlines() if port in line])


def test_an_rp_filter_drop_names_the_way_back(traced):
    lab, outcomes, run, events, _path = traced
    assert outcomes[RPF].mismatches() == [], outcomes[RPF].mismatches()
    veth = lab.pods["pod-c"].host_ifname
    drops = [e for e in events if e["kind"] == "drop" and e["saddr"] == SPOOFED
             and e["netns"] == lab.ns_inode["router"]]
    assert [e["drop"]["reason"] for e in drops] == ["IP_RPFILTER"], drops
    route, judged = drops[0].get("route"), outcomes["judged"][RPF]
    assert route and route["reverse"], drops[0]
    assert (route["table"], route["result"], route["dev"]) == (
        judged["table"], judged["type"], judged["oif"]), (route, judged)
    assert judged["oif"] != veth
    words = "rp_filter: the way back to %s is routed by table %s dev %s, not %s" % (
        SPOOFED, judged["table"], judged["oif"], veth)
    assert any(words in line for line in run.stderr.splitlines()), run.stderr
