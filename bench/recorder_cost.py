#!/usr/bin/python3
"""What --on-trouble's flight recorder costs (issue 27), side by side in one run (host):
over a paced 2000/s stream between two namespaces, --route -H <receiver> (every probe hit a
row) against --on-trouble -H <receiver> (every hit recorded in the kernel, no row: the stream
has no trouble) and --on-trouble --slow 1s (the same and the slow check), and the same two with
a filter that rejects every datagram (-H of another address: the cost of the check only).
Figures: the kernel's run_time_ns / run_cnt over the tracer's programs
(kernel.bpf_stats_enabled), their run time per datagram, rows printed (the recorder's goal: 0),
the tracer process's CPU time per second (--slow 40ms: its sweep every 10 ms),
the median of the rounds, variants alternating. The receiver's socket is read here (the
other benches leave it full: each datagram then a drop, which the recorder would tell).

    sudo /usr/bin/python3 bench/recorder_cost.py [--seconds 3] [--rounds 3]

Prints a table and one JSON line. No assertions: measurement only.
"""

import json
import os
import socket
import statistics
import sys
import threading

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

from why_cost import measure  # noqa: E402

OTHER_IP = "192.0.2.1"      # TEST-NET-1: no datagram of the stream has it


def drain(sink):
    """Read what arrives at sink, in the background: no datagram is dropped at a full socket."""
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)

    def read():
        try:
            while True:
                sink.recv(65536)
        except OSError:         # closed by VethPair's exit
            pass
    threading.Thread(target=read, daemon=True).start()


def main():
    import node
    opts = node.rounds_options(__doc__)
    variants = (("route", ["--route", "-H", node.RX_IP]),
                ("recorder", ["--on-trouble", "-H", node.RX_IP]),
                ("recorder_slow", ["--on-trouble", "--slow", "1s", "-H", node.RX_IP]),
                # --slow's sweep at its fastest: every 10 ms
                ("recorder_sweep", ["--on-trouble", "--slow", "40ms", "-H", node.RX_IP]),
                ("route_rejecting", ["--route", "-H", OTHER_IP]),
                ("recorder_rejecting", ["--on-trouble", "-H", OTHER_IP]))
    results = {}
    with node.VethPair() as pair:
        drain(pair.sink)
        for n in range(opts.rounds):
            for variant, args in variants:
                node.log("round %d: %s" % (n + 1, variant))
                results.setdefault(variant, []).append(measure(pair, args, opts.seconds))
    summary = {}
    print("%-19s %10s %12s %8s %8s %8s %10s" % ("tracer", "ns/hit", "ns/datagram", "hits",
                                                 "rows", "lost", "cpu ms/s"))
    for variant, _args in variants:
        rs = results[variant]
        hit = statistics.median(r["ns_per_hit"] for r in rs)
        per = statistics.median(r["ns_per_datagram"] for r in rs)
        summary["%s_ns_per_hit" % variant] = hit
        summary["%s_ns_per_datagram" % variant] = per
        summary["%s_rows" % variant] = rs[-1]["rows"]
        cpu = statistics.median(r["tracer_cpu_per_s"] for r in rs) * 1000
        summary["%s_tracer_cpu_ms_per_s" % variant] = cpu
        print("%-19s %10.1f %12.1f %8d %8s %8s %10.1f" % (variant, hit, per, rs[-1]["hits"],
                                                        rs[-1]["rows"], rs[-1]["lost"], cpu))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
