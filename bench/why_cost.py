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

import argparse
import json
import os
import statistics
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

PACED_PPS = 2000


def measure(pair, args, seconds):
    import node
    from capture import paced
    with node.DrainedTracer(args).start() as tracer:
        paced(pair, 1.0, PACED_PPS)      # warm-up
        tracer.wait_quiet(limit=30)
        with node.BpfRunStats() as stats:
            before = node.prog_stats(tracer.proc.pid)
            r = paced(pair, seconds, PACED_PPS)
            after = node.prog_stats(tracer.proc.pid)
        tracer.wait_quiet(limit=30)
    if not stats.enabled:
        raise SystemExit("kernel.bpf_stats_enabled cannot be turned on here")
    ns = sum(after[p][0] - before.get(p, (0, 0))[0] for p in after)
    runs = sum(after[p][1] - before.get(p, (0, 0))[1] for p in after)
    return {"ns_per_hit": ns / runs if runs else None, "hits": runs,
            "ns_per_datagram": ns / r["received"] if r["received"] else None,
            "received": r["received"], "rows": tracer.exit_rows, "lost": tracer.exit_lost}


def main():
    import node
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args()
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
