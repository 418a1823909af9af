"""What conntrack decided, on every row (issue 23), against `conntrack -L` / `conntrack -E` on a
kube-proxy node in iptables mode (testbed/conntrack.py ConntrackLab): UDP and TCP through the
ClusterIP service 10.96.0.10:53, DNATed to the server pod.

Runs on: host (tracepoints) and guest-6.1 (kprobes). One tracer start:
`-H client --ct-state new --ct-state est --ct --json=FILE --story-per-packet`, which sees the
UDP exchange (two request/reply pairs) and the TCP exchange. Its rows must carry what conntrack
-L says of each connection (the DNAT reply tuple, the state, the status bits), and the in-kernel
--ct-state filter must have left out the rows of skbs that carried no entry (a packet's rows
before conntrack saw it on the node). `-r FILE --ct-state new` (no compile) keeps only the first
packet's rows of each connection.
"""

import json
import os
import re
import subprocess

import pytest
from conftest import ARRIVAL

from testbed.conntrack import ConntrackLab
from testbed.kubeproxy import SERVER
from testbed.topology import IP, POD_VETH, cleanup_stale, netns_path
from testbed.tracer import PYTHON, SKBTRACER, TracerRun

UDP_SPORT, TCP_SPORT = 47101, 47102
SERVICE = (IP["service"], 53)


@pytest.fixture(scope="module")
def traced(tmp_path_factory, settle):
    json_path = str(tmp_path_factory.mktemp("conntrack") / "events.jsonl")
    cleanup_stale()
    with ConntrackLab() as lab:
        node1 = os.stat(netns_path(lab.node.cluster.ns["node1"])).st_ino
        args = ["--route", "-H", IP["client"], "--ct-state", "new", "--ct-state", "est", "--ct",
                "--json=" + json_path, "--story-per-packet", "--width", "1000", "-v"]
        with TracerRun(args) as run:
            udp = lab.udp_exchange(sport=UDP_SPORT, count=2)
            tcp = lab.tcp_exchange(sport=TCP_SPORT, lines=2)
        with open(json_path) as f:
            events = [json.loads(line) for line in f if '"type": "event"' in line]
        yield run, events, node1, udp, tcp, json_path


def flow_events(events, l4, sport):
    """The events of our connection (both directions: the client's port on either end)."""
    return [o for o in events if o["l4proto"] == l4 and sport in (o["sport"], o["dport"])]


def test_run_ok_and_ground_truth(traced):
    run, events, _node1, udp, tcp, _path = traced
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert re.search(r"^skbtracer: \d+ rows printed, 0 events lost$", run.stderr, re.M), run.stderr
    # conntrack -L: both connections DNATed to the server pod, and answered
    assert udp.replies == 2 and tcp.replies == 2
    for ex in (udp, tcp):
        assert (ex.entry.orig["dst"], ex.entry.orig["dport"]) == (IP["service"], "53")
        assert (ex.entry.reply["src"], ex.entry.reply["sport"]) == (SERVER.ip, str(SERVER.port))
    assert [e.kind for e in udp.events][:1] == ["NEW"]
    # -v: what the events carry (struct nf_conn from BTF: built in on the host, the
    # nf_conntrack module's BTF on 6.1)
    assert "skbtracer: conntrack on the events: state, id, status and tuples" in run.stderr, \
        run.stderr


def _the_request(events, l4, sport, node1):
    """The first packet's rows in node1 (after DNAT was chosen: it carries the entry)."""
    mine = [o for o in flow_events(events, l4, sport) if o["netns"] == node1]
    requests = [o for o in mine if o["sport"] == sport]
    assert requests, "no request rows in node1"
    return requests


def test_request_rows_show_new_with_the_dnat_reply_tuple(traced):
    _run, events, node1, udp, _tcp, _path = traced
    requests = _the_request(events, 17, UDP_SPORT, node1)
    first = [o for o in requests if o["ct"]["state"] == "NEW"]
    assert first, requests
    for o in first:
        ct = o["ct"]
        assert ct["orig"] == {"proto": "udp", "src": IP["client"], "sport": UDP_SPORT,
                              "dst": IP["service"], "dport": 53}, ct
        assert ct["reply"] == {"proto": "udp", "src": udp.entry.reply["src"],
                               "sport": int(udp.entry.reply["sport"]), "dst": IP["client"],
                               "dport": UDP_SPORT}, ct
        assert "DST_NAT" in ct["status"] and ct["id"]
        assert ct["zone"] in (0, None) and ct["mark"] in (0, None)
    # the second request of the same socket: the same connection, ESTABLISHED
    later = [o for o in requests if o["ct"]["state"] == "ESTABLISHED"]
    assert later and {o["ct"]["id"] for o in later} == {first[0]["ct"]["id"]}, requests
    assert all("SEEN_REPLY" in o["ct"]["status"] for o in later)


def test_reply_rows_show_established_reply(traced):
    _run, events, node1, udp, _tcp, _path = traced
    replies = [o for o in flow_events(events, 17, UDP_SPORT)
               if o["netns"] == node1 and o["dport"] == UDP_SPORT]
    assert replies, "no reply rows in node1"
    assert {o["ct"]["state"] for o in replies} == {"ESTABLISHED_REPLY"}, replies
    request_id = _the_request(events, 17, UDP_SPORT, node1)[0]["ct"]["id"]
    assert {o["ct"]["id"] for o in replies} == {request_id}


def test_tcp_syn_new_then_established(traced):
    _run, events, node1, _udp, _tcp, _path = traced
    requests = _the_request(events, 6, TCP_SPORT, node1)
    syn = [o for o in requests if o["tcp_flags"] == "SYN"]
    assert syn and {o["ct"]["state"] for o in syn} == {"NEW"}, requests
    assert syn[0]["ct"]["reply"]["src"] == SERVER.ip
    rest = [o for o in requests if o["tcp_flags"] != "SYN"]
    assert rest and {o["ct"]["state"] for o in rest} == {"ESTABLISHED"}, requests


def test_the_kernel_filter_left_out_rows_without_an_entry(traced):
    """--ct-state new,est: every row carries an entry. The request's arrival in node1 (from the
    client's veth, before conntrack's PREROUTING hook) carried none, so it has no row, while the
    same packet's rows after conntrack (forwarded to the server) are there."""
    _run, events, node1, _udp, _tcp, _path = traced
    ours = flow_events(events, 17, UDP_SPORT) + flow_events(events, 6, TCP_SPORT)
    assert ours and all(o["ct"] is not None for o in ours)
    assert {o["ct"]["state"] for o in ours} <= {"NEW", "ESTABLISHED", "ESTABLISHED_REPLY"}
    arrivals = [o for o in ours if o["netns"] == node1 and o["ifname"] == POD_VETH["client"]
                and o["func"] in ARRIVAL]
    assert arrivals == [], arrivals
    assert _the_request(events, 17, UDP_SPORT, node1)       # the positive control


def test_text_rows_end_in_the_ct_suffix(traced):
    run, _events, _node1, udp, _tcp, _path = traced
    dnat = " ct=NEW dnat %s:53=>%s:%s" % (IP["service"], udp.entry.reply["src"],
                                          udp.entry.reply["sport"])
    mine = [r for r in run.rows if ":%d->" % UDP_SPORT in r.pkt]
    assert any(r.line.endswith(dnat) for r in mine), "\n".join(r.line for r in mine)
    assert all(" ct=" in r.line for r in mine)
    replies = [r for r in run.rows if "->%s:%d" % (IP["client"], UDP_SPORT) in r.pkt]
    assert any(" ct=EST,R dnat " in r.line for r in replies), "\n".join(r.line for r in replies)


def test_story_tells_the_connection(traced):
    run, _events, _node1, udp, _tcp, _path = traced
    told = "NEW -> DNAT %s:53 => %s:%s" % (IP["service"], udp.entry.reply["src"],
                                           udp.entry.reply["sport"])
    lines = [line for line in run.stderr.splitlines() if "U %s:%d->" % (IP["client"], UDP_SPORT)
             in line]
    assert any(told in line for line in lines), run.stderr
    assert any("ESTABLISHED_REPLY" in line for line in run.stderr.splitlines()
               if "->%s:%d" % (IP["client"], UDP_SPORT) in line), run.stderr


def test_read_back_with_ct_state_new_keeps_the_first_packets(traced):
    """-r FILE --ct-state new (the saved "ct" objects, no compile): only the first packet of
    each connection (the UDP request, the TCP SYN) is left."""
    _run, events, _node1, _udp, _tcp, path = traced
    done = subprocess.run([PYTHON, SKBTRACER, "-r", path, "--ct-state", "new", "--json",
                           "--no-summary"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line) for line in done.stdout.splitlines() if '"type": "event"' in line]
    udp_kept = flow_events(kept, 17, UDP_SPORT)
    tcp_kept = flow_events(kept, 6, TCP_SPORT)
    assert udp_kept and tcp_kept
    assert {o["ct"]["state"] for o in udp_kept + tcp_kept} == {"NEW"}
    assert len({o["ip_id"] for o in udp_kept}) == 1          # one datagram
    assert {o["tcp_flags"] for o in tcp_kept} == {"SYN"}
    assert len(udp_kept) < len(flow_events(events, 17, UDP_SPORT))
