#!/usr/bin/python3
"""Empty BPF programs on the hooks skbtracer would attach for the same
arguments: the floor that skbtracer's cost per probe hit is measured
against (bench/reject_cost.py). Prints skbtracer's header once attached
(so bench/node.py's DrainedTracer runs it as it runs skbtracer), detaches
on SIGINT/SIGTERM.

    /usr/bin/python3 bench/empty_probes.py [skbtracer options]
"""

import os
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skbtracer_lib import config
from skbtracer_lib.events.textrow import HEADER  # noqa: E402
from skbtracer_lib.program import (
    kernel,  # noqa: E402
    source,
)

EMPTY = """
int empty_kprobe(struct pt_regs *ctx) { return 0; }
int empty_raw(struct bpf_raw_tracepoint_args *ctx) { return 0; }
"""


def main(argv):
    from bcc import BPF
    cfg = config.parse_args(argv)
    plan = source.Program(cfg).plan
    headers = kernel.find_header_tree()     # bcc's includes, found as skbtracer finds them
    if headers.kernel_source:
        os.environ["BCC_KERNEL_SOURCE"] = headers.kernel_source
    bpf = BPF(text="#include <uapi/linux/ptrace.h>\n" + EMPTY)
    attached = 0
    for probe in plan.probes:
        for attach_type, target, _fn in probe.attach:
            try:
                if attach_type == "kprobe":
                    bpf.attach_kprobe(event=target, fn_name="empty_kprobe")
                elif attach_type == "kretprobe":
                    bpf.attach_kretprobe(event=target, fn_name="empty_kprobe")
                else:
                    bpf.attach_raw_tracepoint(tp=target, fn_name="empty_raw")
                attached += 1
            except Exception:
                pass            # as skbtracer skips what cannot attach
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    sys.stdout.write(HEADER + "\n")
    sys.stdout.flush()
    sys.stderr.write("empty_probes: %d hooks\n" % attached)
    while not stop:
        signal.pause()
    bpf.cleanup()
    sys.stderr.write("skbtracer: 0 rows printed, 0 events lost\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
