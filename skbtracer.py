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
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

# The library is imported by main(), after the signal handlers are in place:
# its imports are the first tenth of a second a Ctrl-C can land in.

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
tracing_started = False     # set by trace(): how main() says an interrupt


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the trace's own handling (live.py's, which
    ends the trace cleanly): said in one line, exit 128 + its number. A
    KeyboardInterrupt, so that the story's own catch still holds."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.status = 128 + signum


def _interrupt(signum, _frame):
    raise Interrupted(signum)


def devnull_onto(fd):
    """/dev/null in fd's place: a stream whose reader went away, or that was
    closed when the run began."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)


class PipeSafeStream:
    """stderr whose reader may go (`2>&1 | head`): after EPIPE the rest goes
    to /dev/null, so the run ends as `| head` ends it (exit 0, no noise)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            devnull_onto(self.stream.fileno())
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except BrokenPipeError:
            devnull_onto(self.stream.fileno())

    def __getattr__(self, name):        # fileno, isatty...: the stream's
        return getattr(self.stream, name)


def open_standard_streams():
    """A closed stdout or stderr (`2>&-`) becomes /dev/null: the messages
    have somewhere to go, and no file the run opens takes fd 1 or 2."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            devnull_onto(fd)
            setattr(sys, name, open(fd, "w", closefd=False))
    sys.stderr = PipeSafeStream(sys.stderr)


def fail(message, status=1):
    sys.stderr.write("skbtracer: %s\n" % message)
    return status


def report(program, headers, loaded):
    """-v: what was attached, what was skipped and why, and from where."""
    say = sys.stderr.write
    say("skbtracer: backend %s; struct layouts from %s\n"
        % (program.backend, program.layouts.description))
    say("skbtracer: bcc includes from %s\n" % headers.description)
    from skbtracer_lib.program.tp_btf import TP_BTF
    if program.tracepoints == TP_BTF:
        say("skbtracer: tracepoints as tp_btf (BTF-typed: the skb's fields read by plain loads)\n")
    elif program.tracepoints_why:
        say("skbtracer: tracepoints as raw tracepoints (not tp_btf: %s)\n"
            % program.tracepoints_why)
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
    """The exit status. From its first line a SIGINT or SIGTERM is one line
    and 130 or 143 (not a traceback from an import, the BTF read or the
    compile); once events are read, live.py's handlers end the trace."""
    global tracing_started
    previous = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    reading = tracing_started = False
    try:
        from skbtracer_lib import config
        cfg = config.parse_args(argv)
        reading = bool(cfg.read)
        return read(cfg) if reading else build_and_trace(cfg)
    except Interrupted as e:
        return fail("interrupted" if reading or tracing_started else
                    "interrupted before tracing started", e.status)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def read(cfg):
    """-r: saved JSON lines; no root, no bcc, no kernel."""
    from skbtracer_lib.replay.session import main as replay
    return replay(cfg)


def build_and_trace(cfg):
    """Live tracing: the BPF program built for cfg, checked, loaded, run."""
    from skbtracer_lib.program import kernel
    from skbtracer_lib.program.functions import FunctionError
    from skbtracer_lib.program.source import Program
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
    global tracing_started
    from skbtracer_lib.live import live_session
    from skbtracer_lib.outputs.files import FileError
    from skbtracer_lib.outputs.sinks import open_outputs
    from skbtracer_lib.program import kernel, layout
    from skbtracer_lib.program.load import Loaded
    from skbtracer_lib.nftrace.session import NftraceError
    cfg = program.cfg
    headers = loaded = session = nftrace = None
    files = []
    try:
        headers = kernel.find_header_tree()
        warning = layout.header_tree_problem(program.layouts, headers, cfg.layout == "headers")
        if warning:
            sys.stderr.write("skbtracer: warning: %s\n" % warning)
        loaded = Loaded(program, headers)
        if cfg.verbose:
            report(loaded.program, headers, loaded)
        else:
            say_skipped(loaded)
        opened = open_outputs(cfg, files)
        if cfg.nftrace:     # after the compile: a failed one leaves the ruleset alone
            from skbtracer_lib.nftrace import Nftrace
            nftrace = Nftrace(cfg, lambda line: sys.stderr.write("skbtracer: %s\n" % line))
        session = live_session(cfg, loaded, out=opened.get("output"), files=opened,
                               rules=nftrace)
        return session.run()
    except (kernel.KernelError, FileError) as e:
        return fail(e)
    except NftraceError as e:
        return fail(e)
    except Exception as e:  # bcc raises plain Exception for compile/load errors
        return fail("cannot load the BPF program: %s" % str(e).strip())
    finally:
        # After an interrupt while compiling, attaching or opening a FIFO
        # (main() says it), or at the trace's end: every probe attached is
        # detached here, and another Ctrl-C must not cut that short.
        tracing_started = session is not None and session.started
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        for f in files:
            f.close()
        if nftrace is not None:     # --nftrace's table out of the ruleset
            try:
                nftrace.close()
            except NftraceError as e:
                fail(e)
        if loaded:
            loaded.close()
        if headers:
            headers.close()


def run():
    open_standard_streams()
    for sig in STOP_SIGNALS:        # what main() leaves behind: exiting, nothing to stop
        signal.signal(sig, signal.SIG_IGN)
    status = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # `| head` closed the pipe: leave quietly, without a flush error at exit
        devnull_onto(sys.stdout.fileno())
    sys.exit(status)


if __name__ == "__main__":
    run()
