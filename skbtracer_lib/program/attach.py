"""--all/--func: many functions sharing the route programs, attached by
kprobe-multi links or single kprobes side by side."""

import os
import resource
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import kprobe_multi, macros
from .kprobe_multi import BPF_TRACE_KPROBE_MULTI

PROGRESS_MIN = 48        # a progress bar and a closing line from this many functions on
ATTACH_THREADS = 4       # single kprobes attached side by side
DETACH_THREADS = 16      # and detached: mostly waiting for RCU grace periods
# kprobes made through perf_event_open (4.17+); else bcc writes kprobe_events
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"

def _progress(what, total):
    """tqdm's bar on a terminal, nothing otherwise; None below PROGRESS_MIN
    or without python3-tqdm (the bar is a nicety: its closing line says the
    counts either way)."""
    if total < PROGRESS_MIN:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="skbtracer: " + what, unit=" functions", file=sys.stderr,
                leave=False, disable=not sys.stderr.isatty())


def _raise_open_files(kprobes):
    """One perf fd per single kprobe: make room for them over the usual
    soft limit of 1024 (as root the hard limit can rise too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = kprobes + 1024
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (wanted, hard if hard == resource.RLIM_INFINITY else max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class FunctionProbes:
    """--all/--func: the many functions sharing the route programs, attached
    with one kprobe-multi link per program where the kernel has them, else
    as single kprobes a few threads attach side by side."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.links = []          # kprobe-multi link fds
        self.kprobes = []        # (event name, program name, perf fd) attached here
        self.how = None          # "kprobe-multi" or "kprobes"
        self.count = 0
        self.reported = False    # the closing line with counts was written
        self.lock = threading.Lock()

    @staticmethod
    def wanted(plan):
        """The probes this attaches: every shared route kprobe when --all or
        --func added functions, else none (the built-in set stays as it was)."""
        if plan.function_counts is None:
            return []
        return [p for p in plan.probes if p.by_address]

    def attach(self, shared):
        if not shared:
            return
        started = time.monotonic()
        by_program = {}
        for probe in shared:
            _type, target, fn_name = probe.attach[0]
            by_program.setdefault(fn_name, []).append(probe)
        bar = _progress("attaching", len(shared))
        try:
            multi_error = None
            # SKBTRACER_KPROBE_MULTI=0: single kprobes anyway (bench/allfuncs.py compares)
            if (macros.ROUTE_FUNC_IP in self.loaded.program.plan.defines
                    and os.environ.get("SKBTRACER_KPROBE_MULTI") != "0"):
                multi_error = self._attach_multi(by_program, bar)
            if self.how is None:
                self._attach_single(by_program, bar)
        finally:
            if bar is not None:
                bar.close()
        if len(shared) >= PROGRESS_MIN:
            skipped = len(shared) - self.count + len(self.loaded.program.plan.skipped)
            how = self.how
            if multi_error:       # the links were refused: single kprobes instead
                how += ", kprobe-multi unavailable: %s" % multi_error
            sys.stderr.write("skbtracer: attached %d functions in %.1f s (%s); %d skipped "
                             "(-v lists them)\n" % (self.count, time.monotonic() - started,
                                                    how, skipped))
            self.reported = True

    def _attach_multi(self, by_program, bar):
        """All or nothing: None when every program got its link, else why not."""
        from bcc import BPF
        bpf = self.loaded.bpf
        for fn_name, group in by_program.items():
            fn = bpf.load_func(fn_name.encode(), BPF.KPROBE, attach_type=BPF_TRACE_KPROBE_MULTI)
            fd = kprobe_multi.create_link(fn.fd, [p.attach[0][1] for p in group])
            if fd < 0:
                for link in self.links:
                    os.close(link)
                self.links = []
                # reload the programs as plain kprobes
                for name in by_program:
                    loaded = bpf.funcs.pop(name.encode(), None)
                    if loaded is not None:
                        os.close(loaded.fd)
                return os.strerror(-fd)
            self.links.append(fd)
            if bar is not None:
                bar.update(len(group))
        for group in by_program.values():
            for probe in group:
                self.loaded.attached.append((probe, "kprobe-multi", probe.attach[0][1]))
        self.count = sum(len(g) for g in by_program.values())
        self.how = "kprobe-multi, %d links" % len(self.links)
        return None

    def _attach_single(self, by_program, bar):
        from bcc import BPF, lib
        bpf = self.loaded.bpf
        jobs = []
        for fn_name, group in by_program.items():
            fn = bpf.load_func(fn_name.encode(), BPF.KPROBE)
            jobs += [(fn.fd, fn_name, probe) for probe in group]

        _raise_open_files(len(jobs))

        def attach_one(job):
            prog_fd, fn_name, probe = job
            target = probe.attach[0][1]
            event = b"p_" + target.encode().replace(b".", b"_")
            fd = lib.bpf_attach_kprobe(prog_fd, 0, event, target.encode(), 0, 0)
            with self.lock:
                if fd >= 0:
                    self.kprobes.append((event, fn_name.encode(), fd))
                    self.loaded.attached.append((probe, "kprobe", target))
                else:
                    self.loaded.skipped.append((target, "attach failed"))
            if bar is not None:
                bar.update(1)

        pool = ThreadPoolExecutor(ATTACH_THREADS)
        try:
            list(pool.map(attach_one, jobs))
        finally:
            # on Ctrl-C: drop what has not started; close() detaches the rest
            pool.shutdown(wait=True, cancel_futures=True)
        self.count = len(self.kprobes)
        self.how = "kprobes, %d threads" % ATTACH_THREADS

    def detach(self):
        if not self.links and not self.kprobes:
            return
        from bcc import lib
        started = time.monotonic()
        count = self.count
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)   # finish detaching
        try:
            bar = _progress("detaching", len(self.kprobes))

            # without the kprobe PMU bcc made each kprobe in tracefs's
            # kprobe_events: that entry goes too, as bcc's detach_kprobe does
            in_tracefs = not os.path.exists(KPROBE_PMU)

            def detach_one(entry):
                lib.bpf_close_perf_event_fd(entry[2])
                if in_tracefs:
                    lib.bpf_detach_kprobe(entry[0])
                if bar is not None:
                    bar.update(1)

            with ThreadPoolExecutor(DETACH_THREADS) as pool:
                list(pool.map(detach_one, self.kprobes))
            if bar is not None:
                bar.close()
            for link in self.links:
                os.close(link)
            self.kprobes, self.links = [], []
        finally:
            signal.signal(signal.SIGINT, previous)
        if count >= PROGRESS_MIN:
            sys.stderr.write("skbtracer: detached %d functions in %.1f s\n"
                             % (count, time.monotonic() - started))
