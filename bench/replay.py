#!/usr/bin/python3
"""What -r costs on a large trace: reading, merging two nodes and telling
the story, against the story alone (what a live run spends at exit on the
same events), side by side in one run.

    /usr/bin/python3 bench/replay.py [--events 100000] [--rounds 3]

Two files (node1, node2; node2's clock 3.7 s ahead) of UDP datagrams that
cross from node1 to node2 (10 rows per node each), written by the same
JsonFormatter a live run uses. Figures are medians over rounds:
  read      json lines -> SavedRuns (replay_read.read_files)
  merge     clock offsets from the matched packets (merge.place_on_one_clock)
  -r        the whole read-back: read + merge + rows + story (stdout to /dev/null)
  story     story.build over the same events as Event objects (the live exit cost)
"""

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

from skbtracer_lib import config, story
from skbtracer_lib.events import textrow
from skbtracer_lib.events.decode import Event, encode  # noqa: E402
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import probes  # noqa: E402
from skbtracer_lib.replay import read as replay_read
from skbtracer_lib.replay import session as replay_session
from skbtracer_lib.story import merge

FUNCS = ["netif_rx", "netif_receive_skb", "net_dev_queue", "net_dev_start_xmit", "consume_skb"]
NS = {"client": 201, "node1": 200, "node2": 300, "server2": 301}
NODE1 = [("net_dev_queue", "client", "eth0", 64), ("net_dev_start_xmit", "client", "eth0", 64),
         ("netif_rx", "node1", "vethclient", 64), ("netif_receive_skb", "node1", "vethclient", 64),
         ("netif_receive_skb", "node1", "cbr0", 64), ("net_dev_queue", "node1", "cbr0", 64),
         ("netif_receive_skb", "node1", "cbr0", 64), ("net_dev_queue", "node1", "eth0", 63),
         ("net_dev_start_xmit", "node1", "eth0", 63), ("net_dev_start_xmit", "node1", "eth0", 63)]
NODE2 = [("netif_rx", "node2", "eth0", 63), ("netif_receive_skb", "node2", "eth0", 63),
         ("net_dev_queue", "node2", "cbr0", 62), ("net_dev_start_xmit", "node2", "cbr0", 62),
         ("net_dev_queue", "node2", "vethserver2", 62),
         ("net_dev_start_xmit", "node2", "vethserver2", 62),
         ("netif_rx", "server2", "eth0", 62), ("netif_receive_skb", "server2", "eth0", 62),
         ("netif_receive_skb", "server2", "eth0", 62), ("consume_skb", "server2", "", 62)]


class Clock:
    def __init__(self, offset):
        self.offset = offset

    def wall_ns(self, ts):
        return ts + self.offset


class Info:
    def __init__(self, label):
        self.label, self.container_id, self.pod_uid = label, None, None


class Names:
    by_inode = {v: Info(k) for k, v in NS.items()}

    def lookup(self, inode):
        return self.by_inode[inode]


def node_events(rows, packets, start, skb_base):
    out = []
    for p in range(packets):
        t = start + p * 200_000
        for i, (func, ns, ifname, ttl) in enumerate(rows):
            out.append(Event(encode(ts_ns=t + i * 2_000, skb=skb_base + (p % 512) * 256,
                                    probe=FUNCS.index(func), netns=NS[ns], ifname=ifname,
                                    ttl=ttl, saddr="10.244.1.2", sport=40000 + p % 20000,
                                    daddr="10.244.2.3", dport=9000, ip_id=1 + p % 65535,
                                    l4proto=17)))
    return out


def write(path, node, events, wall_offset):
    rows = textrow.RowFormatter(FUNCS, probes.DropReasons({}, "bench"), hex, Clock(wall_offset))
    fmt = jsonl.JsonFormatter(rows, Names(), node=node)
    with open(path, "w") as f:
        f.write(jsonl.dumps(jsonl.start_object("tracepoint", node=node, run_id=fmt.run_id,
                                                   probes=FUNCS, attached=FUNCS,
                                                   modes=["route"])) + "\n")
        for e in events:
            f.write(fmt.line(e) + "\n")
        f.write(jsonl.dumps(jsonl.end_object(node, fmt.run_id, events[-1].ts_ns, 0, []))
                + "\n")


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    packets = args.events // (len(NODE1) + len(NODE2))
    one = node_events(NODE1, packets, 10_000_000_000, 0xffff888100000000)
    two = node_events(NODE2, packets, 10_000_000_000 + 18_000 + 20_000, 0xffff888200000000)
    base = 1_700_000_000_000_000_000
    figures = {"read": [], "merge": [], "-r": [], "story": []}
    with tempfile.TemporaryDirectory() as where:
        a, b = os.path.join(where, "a.jsonl"), os.path.join(where, "b.jsonl")
        write(a, "node1", one, base)
        write(b, "node2", two, base + 3_700_000_000)
        size = os.path.getsize(a) + os.path.getsize(b)
        cfg = config.parse_args(["-r", a, b])
        for _ in range(args.rounds):
            seconds, runs = timed(lambda: replay_read.read_files([a, b], lambda _t: None))
            figures["read"].append(seconds)
            seconds, merged = timed(lambda: merge.place_on_one_clock(runs))
            figures["merge"].append(seconds)

            def whole():
                with open(os.devnull, "w") as null:
                    r = replay_read.read_files([a, b], lambda _t: None)
                    return replay_session.saved_session(cfg, r, out=null, err=io.StringIO()).run()
            figures["-r"].append(timed(whole)[0])
            shifted = one + two     # node2 on node1's clock already: the story alone
            figures["story"].append(timed(lambda: story.build(shifted, FUNCS))[0])
    total = len(one) + len(two)
    med = {k: statistics.median(v) for k, v in figures.items()}
    print("replay bench: %d events (%d packets across 2 nodes), %.1f MB of JSON lines, "
          "median of %d rounds" % (total, packets, size / 1e6, args.rounds))
    print("offset found: %+.6f s (true +3.700000 s + the 20 us wire)"
          % (merged.offsets["node2"] / 1e9))
    for name in ("read", "merge", "-r", "story"):
        print("  %-6s %7.3f s  %6.2f us/event  %5.2fx the story alone"
              % (name, med[name], med[name] / total * 1e6, med[name] / med["story"]))


if __name__ == "__main__":
    main()
