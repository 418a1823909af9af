"""The seed's six scenarios, asserted on skbtracer's own rows.

| # | cbr0 promisc | traffic                  | server receives |
| 1 | on           | service -> server (node1) | 2 (the duplicate) |
| 2 | on           | service -> server2 (node2) | 1 |
| 3 | on           | client -> server directly | 1 |
| 4 | off          | service -> server         | 1 |
| 5 | off          | service -> server2        | 1 |
| 6 | off          | client -> server directly | 1 |
| 7 | on, ebtables dedup rule | as 1           | 1 |
"""

import re

import pytest
from conftest import ARRIVAL, BACKEND, EXPECTED, HAVE_DROP_REASONS, TRACEPOINTS

from testbed.scenarios import run_scenarios
from testbed.topology import SeedCluster
from testbed.tracer import is_subsequence

MODES = ["--route", "--drop"] + (["--iptable"] if BACKEND == "kprobe" else [])


@pytest.fixture(scope="module", params=["nft", "legacy"])
def traced(request, settle):
    with SeedCluster(promisc=True, iptables=request.param) as cluster:
        results, run = run_scenarios(cluster, MODES + ["-v"], settle=settle)
        yield cluster, results, run


def functions(rows):
    return [r.function for r in rows]


def test_tracer_exit_summary(traced):
    _cluster, _results, run = traced
    assert run.returncode == 0, run.stderr
    assert re.search(r"^skbtracer: \d+ rows printed, 0 events lost$", run.stderr, re.M), run.stderr
    assert "Traceback" not in run.stderr


def test_tracer_reports_the_kernel_it_was_expected_to_find(traced):
    """-v: the backend, the drop probe and nft_do_chain as the flavour's
    kernel has them (conftest.EXPECTED), not as the tracer decided."""
    cluster, _results, run = traced
    say = run.stderr
    assert re.search(r"^skbtracer: backend %s;" % BACKEND, say, re.M), say
    assert re.search(r"^skbtracer: attached %s kfree_skb\b" % TRACEPOINTS, say, re.M), say
    if BACKEND == "kprobe":
        assert re.search(r"^skbtracer: attached kprobe ip_rcv\b", say, re.M), say
        nft = re.search(r"^skbtracer: (attached kprobe|skipped) nft_do_chain\b.*$", say, re.M)
        assert nft, say
        attached = nft.group(1) == "attached kprobe"
        # nf_tables is loaded by the nft cluster's rules before the tracer starts
        assert attached == EXPECTED.nft_verdicts or cluster.iptables == "legacy", nft.group(0)


@pytest.mark.parametrize("number, expected", [(1, 2), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1)])
def test_server_counts_and_skbs_reaching_it(traced, number, expected):
    cluster, results, run = traced
    result = results[number]
    assert result.received == expected, "\n".join(r.line for r in result.rows)
    reaching = result.skbs_reaching(cluster, result.target_pod, ARRIVAL)
    assert len(reaching) == expected, "\n".join(r.line for r in result.rows)


def test_scenario1_two_routes(traced):
    """The duplicate: one copy forwarded by the bridge, one passed up,
    routed and sent back into the bridge."""
    cluster, results, _run = traced
    result = results[1]
    reaching = result.skbs_reaching(cluster, "server", ARRIVAL)
    paths = result.paths
    if BACKEND == "kprobe":
        passed_up = [s for s in reaching if "br_pass_frame_up" in functions(paths[s])]
        forwarded = [s for s in reaching if s not in passed_up]
        assert len(passed_up) == 1 and len(forwarded) == 1
        up = paths[passed_up[0]]
        assert is_subsequence(["br_handle_frame_finish", "br_forward", "br_pass_frame_up",
                               "ip_rcv", "ip_output", "__br_forward"], functions(up)), functions(up)
        assert any(r.function == "ip_rcv" and r.ifname == "cbr0" for r in up)
        assert "__br_forward" in functions(paths[forwarded[0]])
        if EXPECTED.nft_verdicts or cluster.iptables == "legacy":
            verdicts = [r.trace for r in result.rows if r.is_verdict]
            assert "2.nat.PREROUTING.ACCEPT" in verdicts, verdicts
    else:
        # tracepoints: the passed-up skb is received on cbr0, then queued
        # back onto the bridge; the other reaches the server directly
        up = [s for s in reaching
              if any(r.ifname == "cbr0" and r.function == "netif_receive_skb" for r in paths[s])]
        assert len(up) == 1
        assert is_subsequence(["netif_receive_skb", "net_dev_queue"],
                              [r.function for r in paths[up[0]] if r.ifname == "cbr0"])


def test_scenario2_routed_to_node2_once(traced):
    cluster, results, _run = traced
    rows = results[2].rows
    node2 = cluster.ns_inode["node2"]
    assert any(r.netns == node2 for r in rows)
    if BACKEND == "kprobe":
        assert is_subsequence(["br_pass_frame_up", "ip_rcv", "ip_output"], functions(rows))
        node1 = cluster.ns_inode["node1"]
        assert [r.function for r in rows if r.netns == node1].count("ip_forward") == 1


def test_scenario3_passed_up_copy_dies_as_otherhost(traced):
    """Direct to the pod: the promiscuous bridge's copy is OTHERHOST and ip_rcv drops it."""
    _cluster, results, _run = traced
    rows = results[3].rows
    drops = [r for r in rows if r.function == "kfree_skb"]
    wanted = "OTHERHOST" if HAVE_DROP_REASONS else None
    assert any(r.reason == wanted and r.pkt_type == 3 for r in drops), "\n".join(r.line for r in rows)
    if BACKEND == "kprobe":
        up = [s for s, path in results[3].paths.items() if "br_pass_frame_up" in functions(path)]
        assert len(up) == 1
        after = functions(results[3].paths[up[0]])
        after = after[after.index("br_pass_frame_up"):]
        assert "ip_rcv" in after and "ip_forward" not in after and "ip_output" not in after
        assert all(r.pkt_type == 3 for r in results[3].paths[up[0]] if r.function == "ip_rcv")


@pytest.mark.parametrize("number", [4, 6])
def test_promisc_off_same_node_is_bridged_only(traced, number):
    _cluster, results, _run = traced
    rows = results[number].rows
    assert not any(r.ifname == "cbr0" and r.function in ("netif_receive_skb", "__netif_receive_skb")
                   for r in rows), "\n".join(r.line for r in rows)
    if BACKEND == "kprobe":
        assert "br_pass_frame_up" not in functions(rows)
        assert "__br_forward" in functions(rows)


def test_scenario5_routed_once(traced):
    cluster, results, _run = traced
    rows = results[5].rows
    if BACKEND == "kprobe":
        assert "br_pass_frame_up" in functions(rows)
        node1 = cluster.ns_inode["node1"]
        assert [r.function for r in rows if r.netns == node1].count("ip_output") == 1
    else:
        assert sum(1 for r in rows if r.ifname == "cbr0" and r.function == "netif_receive_skb") == 1


def test_dedup_rule_drops_the_routed_copy(traced):
    _cluster, results, _run = traced
    drops = [r for r in results[7].rows if r.function == "kfree_skb"]
    wanted = "NETFILTER_DROP" if HAVE_DROP_REASONS else None
    assert any(r.reason == wanted for r in drops), "\n".join(r.line for r in results[7].rows)
