"""--nftrace on real traffic (the seed's node1, iptables-nft): the DNAT of
scenario 1 named by its rule and comment, a DROP rule with a comment and a
chain's policy drop named on the DROPPED lines and in the JSON rows, and
the trace table gone after every exit (SIGINT, SIGTERM, kill -9: the owner
flag). Handles are read from `nft -a list` in node1, never assumed."""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import BACKEND, NFTRACE_HOST_ONLY
from testbed.topology import IP, SeedCluster
from testbed.tracer import SKBTRACER, TracerRun

pytestmark = pytest.mark.skipif(BACKEND == "kprobe", reason=NFTRACE_HOST_ONLY)

TABLE = "table inet skbtracer_trace"
SEP_COMMENT, DROP_COMMENT = "default/svc:dns", "test/firewall:drop"
DROP_PORT, POLICY_PORT = 9100, 9200
RULES = """*nat
:KUBE-SVC-T - [0:0]
:KUBE-SEP-T - [0:0]
-I KUBE-SERVICES 1 -d 10.96.0.10/32 -p udp --dport 53 -m comment --comment "default/svc:dns cluster IP" -j KUBE-SVC-T
-A KUBE-SVC-T -j KUBE-SEP-T
-A KUBE-SEP-T -p udp -m comment --comment "%s" -j DNAT --to-destination %s:9000
COMMIT
*filter
:INPUT DROP [0:0]
-I FORWARD 1 -s %s -p udp --dport %d -m comment --comment "%s" -j DROP
COMMIT
"""


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(prefix="nftt") as c:
        c.exec("node1", ["iptables-nft-restore", "-w", "--noflush"],
               input=RULES % (SEP_COMMENT, IP["server"], IP["client"], DROP_PORT, DROP_COMMENT))
        c.start_udp_receiver("server")
        yield c


def tables(cluster):
    return cluster.exec("node1", ["nft", "list", "tables"]).stdout


def handle_of(cluster, family, table, chain, words):
    """The handle of the rule in the chain whose `nft -a list` text has words."""
    listing = cluster.exec("node1", ["nft", "-a", "list", "chain", family, table, chain]).stdout
    found = [int(m.group(1)) for line in listing.splitlines() if words in line
             for m in [re.search(r"# handle (\d+)$", line)] if m]
    assert len(found) == 1, listing
    return found[0]


@pytest.fixture(scope="module")
def traced(cluster):
    jsonl = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False).name
    args = ["-N", cluster.ns["node1"], "-H", IP["client"], "--proto", "udp", "--route", "--drop",
            "--nftrace", "--json=" + jsonl, "--force"]
    with TracerRun(args) as run:
        present = tables(cluster)
        cluster.send_udp("client", "10.96.0.10", 53, sport=41501)       # scenario 1
        cluster.send_udp("client", IP["server"], DROP_PORT, sport=41502)
        cluster.send_udp("client", "10.244.1.1", POLICY_PORT, sport=41503)
        time.sleep(0.5)
    with open(jsonl) as f:
        events = [json.loads(line) for line in f if line.startswith('{"type": "event"')]
    replay = subprocess.run([sys.executable, SKBTRACER, "-r", jsonl], capture_output=True,
                            text=True, timeout=60)
    os.unlink(jsonl)
    return run, present, events, " ".join(run.stdout.split()), " ".join(run.stderr.split()), \
        replay


def test_says_the_ruleset_changed_and_removes_the_table(cluster, traced):
    run, present, _events, _out, err, _replay = traced
    assert run.returncode == 0, run.stderr
    assert TABLE in present
    assert "--nftrace changed the ruleset: added table inet skbtracer_trace" in err
    assert "by the kernel if skbtracer is killed (owner flag)" in err
    assert TABLE not in tables(cluster)


def test_dnat_named_by_its_rule_and_comment(cluster, traced):
    _run, _present, _events, _rows, out, _replay = traced
    handle = handle_of(cluster, "ip", "nat", "KUBE-SEP-T", "dnat to")
    assert ('(DNAT ->%s:9000 by nat/KUBE-SEP-T handle %d #1 "%s")'
            % (IP["server"], handle, SEP_COMMENT)) in out, out


def test_drop_rule_named(cluster, traced):
    _run, _present, events, _rows, out, _replay = traced
    handle = handle_of(cluster, "ip", "filter", "FORWARD", "dport %d" % DROP_PORT)
    words = 'NETFILTER_DROP (nft_do_chain+0x'
    assert re.search(r'DROPPED: U %s:41502->%s:%d .*%s[0-9a-f]+\) by filter/FORWARD handle %d '
                     r'#1 "%s"' % (re.escape(IP["client"]), re.escape(IP["server"]), DROP_PORT,
                                   re.escape(words), handle, DROP_COMMENT), out), out
    rows = [e for e in events if e.get("rule") and e["sport"] == 41502]
    assert rows, "no JSON row with a rule"
    rule = rows[0]["rule"]
    assert (rule["table"], rule["chain"], rule["handle"], rule["comment"], rule["verdict"]) == \
        ("filter", "FORWARD", handle, DROP_COMMENT, "drop")
    assert rule["iptables"].startswith("-A FORWARD ") and rule["policy"] is False
    row = [line for line in _run.stdout.splitlines() if ":41502->" in line and "NETFILTER" in line]
    assert row and row[0].endswith(" rule=filter/FORWARD#%d" % handle), row


def test_replay_tells_the_same_rules(cluster, traced):
    """-r of the run's JSON lines: the same DNAT, DROPPED lines and row suffixes."""
    _run, _present, _events, rows, out, replay = traced
    assert replay.returncode == 0, replay.stderr
    told = " ".join(replay.stderr.split())
    sep = handle_of(cluster, "ip", "nat", "KUBE-SEP-T", "dnat to")
    drop = handle_of(cluster, "ip", "filter", "FORWARD", "dport %d" % DROP_PORT)
    for words in ('by nat/KUBE-SEP-T handle %d #1 "%s")' % (sep, SEP_COMMENT),
                  'by filter/FORWARD handle %d #1 "%s"' % (drop, DROP_COMMENT),
                  "by policy DROP of filter/INPUT"):
        assert told.count(words) == out.count(words) > 0, (words, told)
    suffixes = re.findall(r"rule=\S+", replay.stdout)
    assert suffixes == re.findall(r"rule=\S+", rows) and suffixes


def test_policy_drop_named(traced):
    _run, _present, events, _rows, out, _replay = traced
    assert re.search(r"DROPPED: U %s:41503->10\.244\.1\.1:%d .*by policy DROP of filter/INPUT"
                     % (re.escape(IP["client"]), POLICY_PORT), out), out
    rules = [e["rule"] for e in events if e.get("rule") and e["sport"] == 41503]
    assert rules and rules[0]["policy"] is True and rules[0]["chain"] == "INPUT"


@pytest.mark.parametrize("ending", ["SIGTERM", "kill -9"])
def test_table_gone_after(cluster, ending):
    run = TracerRun(["-N", cluster.ns["node1"], "-H", IP["client"], "--proto", "udp", "--drop",
                     "--nftrace"])
    run.start()
    try:
        assert TABLE in tables(cluster)
    finally:
        if ending == "SIGTERM":
            run.terminate()
            assert run.wait() == 0, run.stderr
        else:
            run._end()      # SIGKILL to our own child, by PID
    # kill -9: the kernel removes an owner table when its socket closes
    deadline = time.monotonic() + 5
    while TABLE in tables(cluster) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert TABLE not in tables(cluster)


def test_a_table_left_behind_is_removed_and_a_second_run_refused(cluster):
    """A table without the owner flag (what a killed run leaves on a kernel
    before 5.12) is removed at the next start, said in one line; while a
    run traces, another --nftrace in its namespace exits 1 in one line."""
    cluster.exec("node1", ["nft", "add", "table", "inet", "skbtracer_trace"])
    args = ["-N", cluster.ns["node1"], "-H", IP["client"], "--proto", "udp", "--drop",
            "--nftrace"]
    with TracerRun(args) as run:
        listing = cluster.exec("node1", ["nft", "list", "table", "inet", "skbtracer_trace"])
        assert "flags owner" in listing.stdout
        second = TracerRun(args)
        second.launch()
        assert second.wait() == 1
        assert second.stderr.strip().splitlines()[-1] == (
            "skbtracer: --nftrace: table inet skbtracer_trace exists and belongs to a running "
            "skbtracer --nftrace (one per namespace)"), second.stderr
        assert TABLE in tables(cluster)
    assert "skbtracer: removed table inet skbtracer_trace a killed skbtracer left behind in " \
        "/run/netns/%s\n" % cluster.ns["node1"] in run.stderr
    assert TABLE not in tables(cluster)


ROUNDS = 25


def test_interleaved_drops_each_get_their_own_rule(cluster):
    """How reliable the tie is: datagrams of one flow dropped by a rule and
    of another by a policy, sent in bursts (the traces of several packets on
    the socket before their rows are read): every drop row names its own."""
    args = ["-N", cluster.ns["node1"], "-H", IP["client"], "--proto", "udp", "--drop",
            "--nftrace"]
    with TracerRun(args) as run:
        for _ in range(ROUNDS):
            cluster.send_udp("client", IP["server"], DROP_PORT, count=2, sport=41511)
            cluster.send_udp("client", "10.244.1.1", POLICY_PORT, count=2, sport=41512)
    handle = handle_of(cluster, "ip", "filter", "FORWARD", "dport %d" % DROP_PORT)
    drops = [line for line in run.stdout.splitlines() if "reason=NETFILTER_DROP" in line]
    by_rule = [line for line in drops if ":41511->" in line]
    by_policy = [line for line in drops if ":41512->" in line]
    assert len(by_rule) == len(by_policy) == 2 * ROUNDS, run.stdout
    assert all(line.endswith(" rule=filter/FORWARD#%d" % handle) for line in by_rule), by_rule
    assert all(line.endswith(" rule=policy:filter/INPUT") for line in by_policy), by_policy
