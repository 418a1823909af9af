"""`make demo`: the seed's node, built in namespaces, traced.

pod "client" sends one UDP datagram to the ClusterIP service 10.96.0.10:53,
which iptables DNATs to pod "server" on the same bridge cbr0 (promiscuous).
skbtracer shows the datagram reaching the server twice: once forwarded by
the bridge, once passed up to the host and routed back into the bridge.

    /usr/bin/python3 -m testbed.demo [--no-promisc] [-- extra skbtracer flags]
"""

import argparse
import sys

from .topology import SeedCluster
from .tracer import TracerRun


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m testbed.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--no-promisc", action="store_true", help="cbr0 not promiscuous (no duplicate)")
    parser.add_argument("--iptables", default="nft", choices=["nft", "legacy"])
    parser.add_argument("extra", nargs="*", help="more skbtracer flags (after --)")
    args = parser.parse_args(argv)

    with SeedCluster(promisc=not args.no_promisc, iptables=args.iptables) as cluster:
        cluster.start_udp_receiver("server")
        flags = ["-H", cluster.ip["client"], "--proto", "udp", "--route", "--iptable", "--drop"]
        flags += args.extra
        print("# node1 netns %s (inode %d): bridge cbr0 %s, promisc %s"
              % (cluster.ns["node1"], cluster.ns_inode["node1"], cluster.ip["cbr0"],
                 "on" if cluster.promisc else "off"))
        print("# client %s (netns inode %d) -> service %s:%d -> DNAT -> server %s:%d (netns inode %d)"
              % (cluster.ip["client"], cluster.ns_inode["client"], cluster.ip["service"],
                 cluster.SERVICE_PORT, cluster.ip["server"], cluster.SERVER_PORT,
                 cluster.ns_inode["server"]))
        print("# skbtracer.py %s" % " ".join(flags), flush=True)
        with TracerRun(flags) as run:
            cluster.send_udp("client", cluster.ip["service"], cluster.SERVICE_PORT)
            received = cluster.received("server", settle=0.5)
        sys.stdout.write(run.stdout)
        sys.stderr.write(run.stderr)
        print("# sent 1 datagram; the server received %d" % received)
    return 0 if run.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
