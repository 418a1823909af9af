#!/usr/bin/python3
"""What reading conntrack costs per probe hit (issue 23), side by side in one run (host):

  accepted  --route -H <receiver>: every datagram of a paced 2000/s stream matches. The
            sender's namespace has a conntrack rule, so its skbs carry an entry: their rows
            read skb->_nfct and the nf_conn (one bpf_probe_read_kernel each); the receiver's
            rows (the entry is dropped when the skb crosses into another namespace) read
            only _nfct.
  rejected  --route -H 10.99.99.99 under a flood: nothing matches, the ct code never runs.

each with skbtracer as it is ("ct") and with the conntrack fields left out of the program
("no_ct": this script starts skbtracer with layout.Layouts._add_conntrack a no-op, so no
HAVE_CT_* is defined). Figures: the kernel's run_time_ns / run_cnt over the tracer's programs
(kernel.bpf_stats_enabled), the median of the rounds, variants alternating.

    sudo /usr/bin/python3 bench/ct_cost.py [--seconds 3] [--rounds 3]

Prints a table and one JSON line. No assertions: measurement only.
"""

import json
import os
import runpy
import statistics
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

WITHOUT_CT = "--tracer-without-ct"      # argv[1] when this script is the tracer
PACED_PPS = 2000
REJECT = ["--route", "-H", "10.99.99.99"]


def tracer_without_ct(args):
    """skbtracer.py with no conntrack fields in the program (the baseline)."""
    from skbtracer_lib.program import layout
    layout.Layouts._add_conntrack = lambda self: None
    sys.argv = [os.path.join(REPO, "skbtracer.py")] + args
    runpy.run_path(sys.argv[0], run_name="__main__")


def measure(pair, variant, args, seconds, pps):
    import node
    from capture import paced
    script = os.path.abspath(__file__) if variant == "no_ct" else node.SKBTRACER
    tracer_args = ([WITHOUT_CT] if variant == "no_ct" else []) + args
    with node.DrainedTracer(tracer_args, script=script).start() as tracer:
        paced(pair, 1.0, pps) if pps else pair.flood(1.0)      # warm-up
        tracer.wait_quiet(limit=30)
        with node.BpfRunStats() as stats:
            before = node.prog_stats(tracer.proc.pid)
            cpu_before = _cpu_seconds(tracer.proc.pid)
            r = paced(pair, seconds, pps) if pps else pair.flood(seconds)
            cpu = _cpu_seconds(tracer.proc.pid) - cpu_before
            after = node.prog_stats(tracer.proc.pid)
        tracer.wait_quiet(limit=30)
    if not stats.enabled:
        raise SystemExit("kernel.bpf_stats_enabled cannot be turned on here")
    ns = sum(after[p][0] - before.get(p, (0, 0))[0] for p in after)
    runs = sum(after[p][1] - before.get(p, (0, 0))[1] for p in after)
    return {"ns_per_hit": ns / runs if runs else None, "hits": runs, "received": r["received"],
            "rows": tracer.exit_rows, "lost": tracer.exit_lost,
            "tracer_cpu_per_s": cpu / r.get("seconds", seconds)}


def _cpu_seconds(pid):
    """The process's user + system CPU time so far (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == WITHOUT_CT:
        return tracer_without_ct(sys.argv[2:])
    import node
    opts = node.rounds_options(__doc__)
    results = {}
    with node.VethPair() as pair:
        # conntrack in the sender's namespace: its skbs carry an entry
        subprocess.run(["ip", "netns", "exec", pair.tx, "iptables", "-A", "OUTPUT", "-m",
                        "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT"], check=True)
        accept = ["--route", "-H", node.RX_IP]
        for n in range(opts.rounds):
            for case, args, pps in (("accepted", accept, PACED_PPS), ("rejected", REJECT, None)):
                for variant in ("ct", "no_ct"):
                    node.log("round %d: %s, %s" % (n + 1, case, variant))
                    r = measure(pair, variant, args, opts.seconds, pps)
                    results.setdefault((case, variant), []).append(r)
    summary = {}
    print("%-9s %-6s %10s %8s %8s" % ("case", "tracer", "ns/hit", "hits", "lost"))
    for (case, variant), rs in sorted(results.items()):
        ns = statistics.median(r["ns_per_hit"] for r in rs)
        summary["%s_%s_ns_per_hit" % (case, variant)] = ns
        print("%-9s %-6s %10.1f %8d %8s" % (case, variant, ns, rs[-1]["hits"], rs[-1]["lost"]))
    for case in ("accepted", "rejected"):
        summary["%s_ct_extra_ns" % case] = (summary["%s_ct_ns_per_hit" % case]
                                           - summary["%s_no_ct_ns_per_hit" % case])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
