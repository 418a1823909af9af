#!/usr/bin/python3
"""Capture the golden corpus's real traces once (root; commit the files):
the seed's seven scenarios, drops, --keep and a two-node run, each as the
JSON lines skbtracer --json writes, on this kernel's backend.

    sudo /usr/bin/python3 tests/unit/golden/capture.py            (host: tracepoints)
    flock /work/guest.lock /usr/bin/python3 -m testbed.qemu --flavour 6.1 -- \
        env SKBT_GOLDEN_DIR=/tmp/golden /usr/bin/python3 tests/unit/golden/capture.py \
        --stdout scenarios drops keep > kprobe.json     (then split kprobe.json)

The files land in tests/unit/golden/corpus/ as <name>-<backend>.jsonl; record.py
turns them (and the synthetic streams it makes) into the expected outputs.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, REPO)

from skbtracer_lib.program import kernel  # noqa: E402
from testbed.scenarios import run_scenarios  # noqa: E402
from testbed.topology import SeedCluster  # noqa: E402
from testbed.tracer import TracerRun  # noqa: E402

# the guest writes only to its overlay: it captures to a temporary folder
# and prints the files as one JSON object (--stdout)
CORPUS = os.environ.get("SKBT_GOLDEN_DIR") or os.path.join(HERE, "corpus")
BACKEND = "kprobe" if kernel.kprobes_available() else "tracepoint"
SETTLE = 1.0 if BACKEND == "kprobe" else 0.3


def path(name):
    return os.path.join(CORPUS, "%s-%s.jsonl" % (name, BACKEND))


def scenarios():
    modes = ["--route", "--drop"] + (["--iptable"] if BACKEND == "kprobe" else [])
    with SeedCluster(promisc=True) as cluster:
        run_scenarios(cluster, modes + ["--json=" + path("scenarios"), "--node", "node1"],
                      settle=SETTLE)


def drops(name="drops", modes=("--drop",)):
    with SeedCluster(promisc=False) as cluster:
        cluster.exec("server", ["iptables-nft", "-w", "-A", "INPUT", "-p", "udp",
                                "--dport", "9100", "-j", "DROP"])
        cluster.start_udp_receiver("server")
        server = cluster.ip["server"]
        with TracerRun(list(modes) + ["-H", cluster.ip["client"], "--proto", "udp",
                                      "--node", "node1", "--json=" + path(name)]):
            for port, sport in ((9100, 42101), (9200, 42102), (9000, 42103)):
                cluster.send_udp("client", server, port, sport=sport)
            cluster.received("server", settle=SETTLE)


def drops_route():
    drops("drops-route", ("--route", "--drop"))


def keep():
    with SeedCluster(promisc=True) as cluster:
        cluster.start_udp_receiver("server")
        service = cluster.ip["service"]
        with TracerRun(["-H", service, "--proto", "udp", "--keep", "--node", "node1",
                        "--json=" + path("keep")]):
            cluster.send_udp("client", service, cluster.SERVICE_PORT)
            cluster.received("server", settle=SETTLE)


def two_nodes():
    with SeedCluster(promisc=True) as cluster:
        cluster.start_udp_receiver("server2")

        def args(node, roles):
            out = ["-H", cluster.ip["client"], "--proto", "udp", "--node", node,
                   "--json=" + path("merge-" + node)]
            for role in roles:
                out += ["-N", cluster.ns[role]]
            return out
        with TracerRun(args("node1", ("node1", "client", "server"))), \
                TracerRun(args("node2", ("node2", "server2"))):
            pod, dst_ip, dst_port = cluster.targets["service2"]
            cluster.send_udp("client", dst_ip, dst_port, sport=42002)
            cluster.received(pod, settle=SETTLE)


def main():
    os.makedirs(CORPUS, exist_ok=True)
    if BACKEND == "kprobe":
        subprocess.run(["modprobe", "br_netfilter"], check=False)
    args = sys.argv[1:]
    to_stdout = "--stdout" in args
    wanted = [a for a in args if a != "--stdout"] or ["scenarios", "drops", "drops_route", "keep", "two_nodes"]
    for name in wanted:
        sys.stderr.write("capture: %s (%s)\n" % (name, BACKEND))
        globals()[name]()
    if to_stdout:
        files = {}
        for name in sorted(os.listdir(CORPUS)):
            with open(os.path.join(CORPUS, name)) as f:
                files[name] = f.read()
        json.dump(files, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
