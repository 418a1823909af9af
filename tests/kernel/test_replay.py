"""Two nodes, two tracers, one story (-r): scenario 2 (client -> service ->
server2 on node2) traced by one skbtracer per node (-N node1 and its pods;
-N node2 and its pod), each writing JSON lines; -r reads both and tells one
packet across both nodes, also with node2's clock 3.7 s ahead."""

import json
import re
import subprocess

import pytest

from testbed.topology import SeedCluster
from testbed.tracer import PYTHON, SKBTRACER, TracerRun

SPORT = 42002
SKEW_NS = 3_700_000_000


def node_args(cluster, node, roles, path):
    args = ["-H", cluster.ip["client"], "--proto", "udp", "--node", node,
            "--json=" + str(path)]
    for role in roles:
        args += ["-N", cluster.ns[role]]
    return args


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, settle):
    where = tmp_path_factory.mktemp("replay")
    a, b = where / "a.jsonl", where / "b.jsonl"
    with SeedCluster(promisc=True) as cluster:
        cluster.start_udp_receiver("server2")
        with TracerRun(node_args(cluster, "node1", ("node1", "client", "server"), a)) as one, \
                TracerRun(node_args(cluster, "node2", ("node2", "server2"), b)) as two:
            pod, dst_ip, dst_port = cluster.targets["service2"]
            cluster.reset_counts()
            cluster.send_udp("client", dst_ip, dst_port, sport=SPORT)
            received = cluster.received(pod, settle=settle)
        yield cluster, received, (one, two), (a, b), where


def netns_names(path):
    return {json.loads(line)["netns_name"] for line in path.read_text().splitlines()
            if '"type": "event"' in line}


def read(*paths, extra=()):
    """-r of the files, the story a row per packet, one line each."""
    return subprocess.run([PYTHON, SKBTRACER, "-r", *map(str, paths), "--story-per-packet",
                           "--width", "1000", *extra], capture_output=True, text=True, timeout=300)


def our_line(stderr):
    found = [line for line in stderr.splitlines()
             if re.match(r"^\s*\d+\s+U 10\.244\.1\.2:%d->" % SPORT, line)]
    assert len(found) == 1, stderr
    return found[0]


def check_one_packet(cluster, stderr):
    line = our_line(stderr)
    ns = cluster.ns
    # the client's packet, DNATed on node1, crosses to node2 and reaches server2: one path
    assert "node1:%s/eth0" % ns["client"] in line, line
    assert re.search(r" > cbr0 > eth0 => node2:%s/eth0 > cbr0 > vethserver2 > node2:%s/eth0 "
                     % (ns["node2"], ns["server2"]), line), line
    assert "{" not in line.split("=>")[0], line      # not a branch: one path across both
    assert line.index("node1:%s" % ns["client"]) < line.index("node2:%s/eth0" % ns["server2"]), line


def test_both_tracers_saw_their_node(two_nodes):
    cluster, received, runs, (a, b), _where = two_nodes
    assert received == 1
    for run in runs:
        assert run.returncode == 0, run.stderr
    for path, node, roles in ((a, "node1", ("node1", "client")), (b, "node2", ("node2", "server2"))):
        objects = [json.loads(line) for line in path.read_text().splitlines()]
        events = [o for o in objects if o["type"] == "event" and o["sport"] == SPORT]
        assert events and {o["node"] for o in events} == {node}
        assert {o["netns_name"] for o in events} >= {cluster.ns[r] for r in roles}
    # -N repeated: each tracer saw its own node's namespaces and no other
    assert netns_names(a) <= {cluster.ns[r] for r in ("node1", "client", "server")}
    assert netns_names(b) <= {cluster.ns[r] for r in ("node2", "server2")}


def test_read_two_nodes_tells_one_packet(two_nodes):
    cluster, _received, _runs, (a, b), _where = two_nodes
    result = read(a, b, extra=["--latency"])
    assert result.returncode == 0, result.stderr
    check_one_packet(cluster, result.stderr)
    assert re.search(r"clock offset of node2 against node1: [+-]0\.0\d+ s", result.stderr), \
        result.stderr
    assert "FROM" in result.stderr and "P99" in result.stderr     # --latency's table


def test_read_two_nodes_with_a_skewed_clock(two_nodes):
    cluster, _received, _runs, (a, b), where = two_nodes
    shifted = where / "b-skewed.jsonl"
    lines = []
    for text in b.read_text().splitlines():
        obj = json.loads(text)
        if obj["type"] == "event":
            obj["time_ns"] += SKEW_NS
        lines.append(json.dumps(obj))
    shifted.write_text("\n".join(lines) + "\n")
    result = read(a, shifted)
    assert result.returncode == 0, result.stderr
    check_one_packet(cluster, result.stderr)
    offset = re.search(r"clock offset of node2 against node1: ([+-][0-9.]+) s", result.stderr)
    assert offset, result.stderr
    assert abs(float(offset.group(1)) - SKEW_NS / 1e9) < 0.1
