#!/usr/bin/python3
"""What --why's routing decisions cost (issue 26), side by side in one run (host):
--route -H <receiver> against --route --why -H <receiver> over a paced 2000/s stream between
two namespaces (each datagram: an output route in the sender, an input route in the receiver,
so fib:fib_table_lookup fires on both sides, and each row looks for a decision). Without --why
nothing of it is compiled or attached (the "route" variant is the original's program).
Figures: the kernel's run_time_ns / run_cnt over the tracer's programs
(kernel.bpf_stats_enabled), and their run time per datagram (the fib program's hits
included), the median of the rounds, variants alternating.

    sudo /usr/bin/python3 bench/why_cost.py [--seconds 3] [--rounds 3]

Prints a table and one JSON line. No assertions: measurement only.
"""

import json
import os
import statistics
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

PACED_PPS = 2000


def measure(pair, args, seconds):
    """ct_cost.measure's figures of skbtracer as it is, and the run time per datagram."""
    from ct_cost import measure as traced
    r = traced(pair, "ct", args, seconds, PACED_PPS)
    r["ns_per_datagram"] = (r["ns_per_hit"] * r["hits"] / r["received"]
                            if r["ns_per_hit"] is not None and r["received"] else None)
    return r


def main():
    import node
    opts = node.rounds_options(__doc__)
    results = {}
    with node.VethPair() as pair:
        for n in range(opts.rounds):
            for variant, extra in (("route", []), ("why", ["--why"])):
                node.log("round %d: %s" % (n + 1, variant))
                r = measure(pair, ["--route", "-H", node.RX_IP] + extra, opts.seconds)
                results.setdefault(variant, []).append(r)
    summary = {}
    print("%-6s %10s %12s %8s %8s" % ("tracer", "ns/hit", "ns/datagram", "hits", "lost"))
    for variant, rs in sorted(results.items()):
        hit = statistics.median(r["ns_per_hit"] for r in rs)
        per = statistics.median(r["ns_per_datagram"] for r in rs)
        summary["%s_ns_per_hit" % variant] = hit
        summary["%s_ns_per_datagram" % variant] = per
        print("%-6s %10.1f %12.1f %8d %8s" % (variant, hit, per, rs[-1]["hits"], rs[-1]["lost"]))
    summary["why_extra_ns_per_datagram"] = (summary["why_ns_per_datagram"]
                                            - summary["route_ns_per_datagram"])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
