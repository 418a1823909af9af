#!/usr/bin/python3
#
# skbtracer  Trace the path of packets through the Linux kernel's network
#            stack: one row per function, tracepoint or netfilter hook an
#            skb passes. For Linux, uses BCC, eBPF.
#
# USAGE: skbtracer.py [-h] [-H ADDR] [--proto PROTO] [-P N] [--icmpid N]
#                     [-p N] [-N NS] [-c N] [-T | -t] [--route] [--iptable]
#                     [--drop] [--dropstack] [--callstack] [--keep]
#                     [--backend B] [-v] [-o FILE] [--json [FILE]] [--force]
#                     [--names] [--no-summary] [-w FILE] [--snaplen N]
#                     [-r FILE ...] [--node NAME] [--latency]
#                     [--version] [EXPRESSION ...]
#
# The eBPF half is skbtracer.c; the Python package skbtracer_lib holds the
# flags (config), building the BPF program (program: probes, layouts, and
# pcapfilter for tcpdump filter expressions), the event path (events), the
# outputs as sinks (outputs), the run loop (session) over live events (live)
# or saved ones (replay, -r), and the packets' story told at exit (story).

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

from skbtracer_lib import config  # noqa: E402
from skbtracer_lib.outputs.files import FileError, open_new_file  # noqa: E402 (tests call it here)
from skbtracer_lib.program import kernel, layout  # noqa: E402
from skbtracer_lib.program.load import Loaded  # noqa: E402
from skbtracer_lib.program.source import Program  # noqa: E402


def fail(message, status=1):
    sys.stderr.write("skbtracer: %s\n" % message)
    return status


def report(program, headers, loaded):
    """-v: what was attached, what was skipped and why, and from where."""
    say = sys.stderr.write
    say("skbtracer: backend %s; struct layouts from %s\n"
        % (program.backend, program.layouts.description))
    say("skbtracer: bcc includes from %s\n" % headers.description)
    from skbtracer_lib.program.probes import drop_reasons
    if "drop" in program.cfg.modes:
        say("skbtracer: drop reason names from %s\n" % drop_reasons().source)
    for probe, attach_type, target in loaded.attached:
        where = " [%s]" % probe.module if probe.module else ""
        note = " (%s)" % probe.note if probe.note else ""
        say("skbtracer: attached %s %s%s%s\n" % (attach_type, target, where, note))
    for missing in program.plan.unavailable:
        say("skbtracer: skipped %s: %s\n" % (missing.flag, missing.reason))
    for name, reason in loaded.skipped:
        say("skbtracer: skipped %s: %s\n" % (name, reason))
    say("skbtracer: conntrack on the events: %s\n" % program.layouts.ct_summary())
    for note in program.layouts.ct_notes:
        say("skbtracer: note: %s\n" % note)
    for note in program.plan.notes:
        say("skbtracer: note: %s\n" % note)


def main(argv=None):
    cfg = config.parse_args(argv)
    if cfg.read:        # saved JSON lines: no root, no bcc, no kernel
        from skbtracer_lib.replay.session import main as replay
        return replay(cfg)
    from skbtracer_lib.program.functions import FunctionError
    try:
        program = Program(cfg)
    except kernel.KernelError as e:
        return fail(e)
    except FunctionError as e:       # --func naming nothing traceable: usage
        return fail(e, 2)
    if cfg.ebpf:
        sys.stdout.write(program.listing())
        return 0
    refused = can_trace(program)
    if refused is not None:
        return refused
    return trace(program)


def can_trace(program):
    """None when this run can load the program, else its exit status (the
    reason said on one line)."""
    if os.geteuid() != 0:
        return fail("must be run as root (it loads eBPF programs)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        return fail("cannot import bcc for %s: install python3-bpfcc (Debian/Ubuntu) "
                    "and run with /usr/bin/python3" % sys.executable)
    if program.notice:
        sys.stderr.write(program.notice + "\n")
    for missing in program.plan.unavailable:
        if program.cfg.modes == {missing.mode}:
            return fail("%s: %s" % (missing.flag, missing.reason))
        sys.stderr.write("skbtracer: %s: %s; %s\n" % (missing.flag, missing.reason,
                                                       missing.without))
    return None


def say_skipped(loaded):
    skipped = loaded.skipped
    if skipped and not loaded.functions.reported:   # else said with the attach count
        sys.stderr.write("skbtracer: %d probe points absent or inlined on this kernel, "
                         "skipped (-v lists them and why)\n" % len(skipped))


def trace(program):
    from skbtracer_lib.live import live_session
    from skbtracer_lib.outputs.sinks import open_outputs
    cfg = program.cfg
    headers = loaded = None
    files = []
    try:
        headers = kernel.find_header_tree()
        warning = layout.header_tree_problem(program.layouts, headers, cfg.layout == "headers")
        if warning:
            sys.stderr.write("skbtracer: warning: %s\n" % warning)
        loaded = Loaded(program, headers)
        if cfg.verbose:
            report(program, headers, loaded)
        else:
            say_skipped(loaded)
        opened = open_outputs(cfg, files)
        return live_session(cfg, loaded, out=opened.get("output"), files=opened).run()
    except (kernel.KernelError, FileError) as e:
        return fail(e)
    except KeyboardInterrupt:
        # Ctrl-C while compiling, attaching (every probe is detached) or opening a FIFO
        return fail("interrupted before tracing started", 130)
    except Exception as e:  # bcc raises plain Exception for compile/load errors
        return fail("cannot load the BPF program: %s" % str(e).strip())
    finally:
        for f in files:
            f.close()
        if loaded:
            loaded.close()
        if headers:
            headers.close()


def run():
    status = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # `| head` closed the pipe: leave quietly, without a flush error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(status)


if __name__ == "__main__":
    run()
