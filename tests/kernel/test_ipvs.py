"""--iptable names IPVS's choice (kube-proxy's IPVS mode, testbed/kubeproxy.py): on the row of a
connection's first packet, the scheduler, the real server and the forwarding method; in the story
`IPVS 10.96.0.30:53/udp rr -> 10.244.1.3:9000 (masq)`; a virtual service without real servers
says so. Judged against `ipvsadm -Lnc` (which connection went to which real server) and
`ipvsadm -Ln` (the scheduler). Guests only: ip_vs is a module and the host loads none; the
kprobe on ip_vs_schedule needs a kprobe kernel. One tracer start.
"""

import json
import re
import subprocess

import pytest
from conftest import BACKEND

from testbed.kubeproxy import FLOWS, NO_ENDPOINTS_IP, PAIR_IP, KubeProxyNode, ipvs_missing
from testbed.topology import IP, cleanup_stale
from testbed.tracer import PYTHON, SKBTRACER, TracerRun

pytestmark = pytest.mark.skipif(BACKEND != "kprobe", reason="needs kprobes (guest)")

UDP_SPORTS = (43101, 43102)     # rr over two real servers: one each
TCP_SPORT = 43103
REFUSED_SPORT = 43104           # the Service without endpoints


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    if why := ipvs_missing():
        pytest.fail(why)        # a kprobe guest loads ip_vs itself
    json_path = str(tmp_path_factory.mktemp("ipvs") / "events.jsonl")
    cleanup_stale()
    with KubeProxyNode(mode="ipvs", promisc=False, vs_conntrack=True) as node:
        args = ["--route", "--iptable", "-H", IP["client"], "--json=" + json_path,
                "--story-per-packet", "--width", "1000", "-v"]
        with TracerRun(args) as run:
            outcomes = {sport: node.send(FLOWS["pair"], sport=sport) for sport in UDP_SPORTS}
            outcomes[TCP_SPORT] = node.send(FLOWS["pair-tcp"], sport=TCP_SPORT)
            outcomes[REFUSED_SPORT] = node.send(FLOWS["no-endpoints"], sport=REFUSED_SPORT)
        conns = {int(c.source.rsplit(":", 1)[1]): c for c in node.ipvs_connections()
                 if c.source.startswith(IP["client"] + ":")}
        services = node.ipvs()
    with open(json_path) as f:
        events = [json.loads(line) for line in f if '"type": "event"' in line]
    yield run, events, outcomes, conns, services, json_path


def choices(events, sport):
    return [o for o in events if o.get("ipvs") and o["sport"] == sport]


def test_run_ok_and_ipvs_probed(traced):
    run, _events, outcomes, conns, _services, _path = traced
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert re.search(r"^skbtracer: \d+ rows printed, 0 events lost$", run.stderr, re.M), run.stderr
    assert "no IPVS decisions" not in run.stderr, run.stderr
    # ground truth: rr sent one datagram to each real server, and the TCP connection through
    assert sorted(tuple(sorted(outcomes[s].received.items())) for s in UDP_SPORTS) == [
        (("server", 0), ("server2", 1)), (("server", 1), ("server2", 0))]
    assert outcomes[TCP_SPORT].connect == "connected"
    assert set(UDP_SPORTS) | {TCP_SPORT} <= set(conns)


@pytest.mark.parametrize("sport", UDP_SPORTS + (TCP_SPORT,))
def test_the_choice_is_the_one_ipvsadm_lists(traced, sport):
    """One row per new connection, on its first packet, naming the real server ipvsadm's
    connection table has for that client port, the service's scheduler, and masquerade."""
    _run, events, _outcomes, conns, services, _path = traced
    rows = choices(events, sport)
    assert len(rows) == 1, rows
    (row,) = rows
    conn = conns[sport]
    assert row["func"] == "ip_vs_schedule"
    assert row["ipvs"]["real_server"] == conn.destination
    assert f'{row["daddr"]}:{row["dport"]}' == conn.virtual   # not yet rewritten
    assert row["ipvs"]["scheduler"] == services[f"{conn.proto} {conn.virtual}"].scheduler == "rr"
    assert row["ipvs"]["forwarding"] == "masq"      # kube-proxy's only method
    if row["l4proto"] == 6:
        assert row["tcp_flags"] == "SYN"


def test_later_packets_of_a_connection_make_no_choice(traced):
    _run, events, _outcomes, _conns, _services, _path = traced
    tcp = [o for o in events if o["sport"] == TCP_SPORT and o["l4proto"] == 6]
    assert len({o["skb"] for o in tcp}) > 1, "only the SYN was seen"
    assert [o["tcp_flags"] for o in tcp if o.get("ipvs")] == ["SYN"]


def test_a_service_without_real_servers_says_so(traced):
    _run, events, outcomes, _conns, _services, _path = traced
    assert outcomes[REFUSED_SPORT].connect == "refused"
    rows = choices(events, REFUSED_SPORT)
    assert rows and all(o["ipvs"] == {"scheduler": "rr", "real_server": None, "forwarding": None}
                        for o in rows), rows
    assert rows[0]["daddr"] == NO_ENDPOINTS_IP


def test_rows_and_story_name_the_choice(traced):
    run, _events, _outcomes, conns, _services, _path = traced
    for sport in UDP_SPORTS:
        real = conns[sport].destination
        assert re.search(r" U:%s:%d->%s:53 +\S+:ip_vs_schedule ipvs=rr:masq->%s$"
                         % (re.escape(IP["client"]), sport, re.escape(PAIR_IP), re.escape(real)),
                         run.stdout, re.M), run.stdout
        assert "IPVS %s:53/udp rr -> %s (masq)" % (PAIR_IP, real) in run.stderr, run.stderr
    assert "IPVS %s:80/tcp rr: no real server" % NO_ENDPOINTS_IP in run.stderr, run.stderr
    assert re.search(r"ip_vs_schedule ipvs=rr:no_real_server$", run.stdout, re.M), run.stdout


def test_r_tells_the_same(traced):
    run, _events, _outcomes, _conns, _services, json_path = traced
    replay = subprocess.run([PYTHON, SKBTRACER, "-r", json_path, "--story-per-packet", "--width",
                             "1000"], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    live = [line for line in run.stdout.splitlines() if " ipvs=" in line]
    again = [line for line in replay.stdout.splitlines() if " ipvs=" in line]
    assert live and [line.split("]", 2)[2] for line in again] == \
        [line.split("]", 2)[2] for line in live]
    for line in run.stderr.splitlines():
        if "IPVS " in line:
            assert line.split("IPVS ", 1)[1] in replay.stderr, replay.stderr
