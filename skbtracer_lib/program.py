"""Building the BPF program (skbtracer.c plus generated #defines and probe
lines), compiling it with bcc and attaching its probes."""

import os
import resource
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import kernel, kprobe_multi, layout, probes, reader
from .kprobe_multi import BPF_TRACE_KPROBE_MULTI
from .events import EVENT_SIZE, BoundedCache, swap16
from .runinfo import ProbeInfo, RunInfo

C_SOURCE_NAME = "skbtracer.c"
# where skbtracer.c takes the translated filter expression
PCAP_FUNCTIONS_MARKER = "/* @pcap-functions@ skbtracer.py puts the translated expression here */"
KEEP_ENTRIES = 65536
STACK_ENTRIES = 16384
# -w: struct capture_t (a u64, the event, an 8-byte head, the bytes) is one
# per-CPU map value, and the kernel refuses values over 32 KiB
CAPTURE_VALUE_MAX = 32768
CAPTURE_BYTES_MAX = CAPTURE_VALUE_MAX - 8 - EVENT_SIZE - 8


def capture_bytes(snaplen):
    """Packet bytes the kernel copies per row for --snaplen."""
    return min(snaplen, CAPTURE_BYTES_MAX)

PROGRESS_MIN = 48        # a progress bar and a closing line from this many functions on
ATTACH_THREADS = 4       # single kprobes attached side by side
DETACH_THREADS = 16      # and detached: mostly waiting for RCU grace periods
# kprobes made through perf_event_open (4.17+); else bcc writes kprobe_events
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"


def c_source_path():
    """skbtracer.c next to skbtracer.py (a checkout), else where setup.cfg
    installs it."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(here, C_SOURCE_NAME),
                      os.path.join(sys.prefix, "share", "skbtracer", C_SOURCE_NAME)):
        if os.path.isfile(candidate):
            return candidate
    raise kernel.KernelError("cannot find %s next to skbtracer.py" % C_SOURCE_NAME)


def filter_defines(cfg):
    """The filters as numbers, in the byte order the kernel's packet bytes
    have when loaded as little-endian integers."""
    d = {}
    if cfg.addr is not None:
        packed = cfg.addr.packed
        if cfg.addr.version == 4:
            d["FILTER_ADDR4"] = "%dU" % int.from_bytes(packed, "little")
        else:
            d["FILTER_ADDR6_0"] = "%dULL" % int.from_bytes(packed[:8], "little")
            d["FILTER_ADDR6_1"] = "%dULL" % int.from_bytes(packed[8:], "little")
    if cfg.proto == "icmp":
        d["FILTER_ICMP"] = 1
    elif cfg.proto in ("tcp", "udp"):
        d["FILTER_L4PROTO"] = {"tcp": 6, "udp": 17}[cfg.proto]
    if cfg.port is not None:
        d["FILTER_PORT"] = swap16(cfg.port)
    if cfg.icmpid is not None:
        d["FILTER_ICMPID"] = swap16(cfg.icmpid)
    if cfg.pid is not None:
        d["FILTER_PID"] = cfg.pid
    inodes = cfg.netns_all or ([cfg.netns] if cfg.netns is not None else [])
    if inodes:        # -N, repeatable: a fixed set of numbers (config.MAX_NETNS at most)
        d["FILTER_NETNS(n)"] = "(%s)" % " || ".join("(n) == %dU" % int(i) for i in inodes)
    if cfg.expression is not None:
        d["PCAP_FILTER"] = 1
        d.update(cfg.expression.defines())
    return d


def mode_defines(cfg):
    d = {}
    if "iptable" in cfg.modes:
        d["MODE_IPTABLE"] = 1
    if "drop" in cfg.modes:
        d["MODE_DROP"] = 1
    if cfg.keep:
        d["KEEP"] = 1
        d["KEEP_ENTRIES"] = KEEP_ENTRIES
    if cfg.stacks:
        d["STACK_ALL" if cfg.stacks == "all" else "STACK_DROPS"] = 1
        d["STACK_ENTRIES"] = STACK_ENTRIES
    if cfg.write:
        d["CAPTURE_BYTES"] = capture_bytes(cfg.snaplen)
    return d


def choose_backend(requested):
    """(backend, notice) for --backend auto|kprobe|tracepoint."""
    have_kprobes = kernel.kprobes_available()
    if requested == "kprobe" and not have_kprobes:
        raise kernel.KernelError("--backend kprobe: kprobes are unavailable on this kernel "
                                 "(no CONFIG_KPROBES); use --backend tracepoint")
    if requested == "auto":
        if have_kprobes:
            return "kprobe", None
        return "tracepoint", ("skbtracer: kprobes are unavailable on this kernel; "
                              "using tracepoints (fewer probe points, see -v)")
    return requested, None


class Program:
    """The complete C text and the probes it instantiates."""

    def __init__(self, cfg, backend=None):
        """backend: force one without checking the kernel can attach it
        (the compile and verifier tests load kprobe programs on kernels
        that cannot attach them)."""
        self.cfg = cfg
        if backend:
            self.backend, self.notice = backend, None
        else:
            self.backend, self.notice = choose_backend(cfg.backend)
        self.layouts = layout.choose(cfg.layout)
        self.plan = probes.plan_probes(cfg, self.backend, self.layouts)
        if cfg.expression is not None:
            self.plan.notes.extend(self.layouts.pcap() + cfg.expression.notes())
        defines = {}
        defines.update(self.layouts.defines)
        defines.update(mode_defines(cfg))
        defines.update(filter_defines(cfg))
        defines.update(self.plan.defines)
        # events through the BPF ring buffer where the kernel has one (5.8+)
        ring = reader.ring_buffer_available()
        try:
            pages = reader.buffer_pages(reader.RING_BUFFER_PAGES if ring else reader.PERF_PAGES)
        except reader.ReaderError as e:
            raise kernel.KernelError(str(e)) from None
        self.ring_buffer_pages = pages if ring else None   # else the perf buffer's, per CPU
        self.perf_pages = None if ring else pages
        if self.ring_buffer_pages:
            defines["RING_BUFFER_PAGES"] = self.ring_buffer_pages
        with open(c_source_path()) as f:
            body = f.read()
        head = ["/* generated by skbtracer.py: layouts from %s, %s backend */"
                % (self.layouts.description, self.backend)]
        head += ["#define %s %s" % (name, value) for name, value in sorted(defines.items())]
        tail = list(dict.fromkeys(p.c_line for p in self.plan.probes if p.c_line))
        self._parts = ("\n".join(head) + "\n\n", body, "\n" + "\n".join(tail) + "\n")
        self.text = self._assemble(listing=False)

    def _assemble(self, listing):
        head, body, tail = self._parts
        expression = self.cfg.expression
        if expression is not None:
            functions = expression.c_functions()
            if listing:
                functions = expression.c_comment() + functions
            body = body.replace(PCAP_FUNCTIONS_MARKER, functions)
        return head + body + tail

    def listing(self):
        """--ebpf: the program as compiled, with the filter expression as a
        comment above its translation (the compiled text has no trace of it)."""
        return self._assemble(listing=True)

    @property
    def capture_bytes(self):
        """-w: packet bytes the kernel copies per row at most."""
        return capture_bytes(self.cfg.snaplen)

    @property
    def probe_names(self):
        return [p.name for p in self.plan.probes]


class Loaded:
    """A compiled program with its probes attached."""

    def __init__(self, program, headers):
        from bcc import BPF   # imported late: flag errors need no bcc
        self.program = program
        self.attached = []     # (probe, type, target)
        self.skipped = list(program.plan.skipped)
        if headers.kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = headers.kernel_source
        self.bpf = BPF(text=program.text)
        symbols = KernelSymbols(self.bpf)
        self.symbolize, self.stack = symbols.symbolize, symbols.stack
        self.functions = FunctionProbes(self)
        try:
            self._register_addresses(program.plan.probes)
            shared = self.functions.wanted(program.plan)
            for probe in program.plan.probes:
                if probe not in shared:
                    self._attach(probe)
            self.functions.attach(shared)
        except BaseException:   # Ctrl-C while attaching included: leave nothing behind
            self.close()
            raise
        if not any(p.kind in ("route", "iptable", "drop") for p, _t, _x in self.attached):
            raise kernel.KernelError("no probe point could be attached (-v lists why)")
        # modules whose functions are probed: a kprobe of an unloaded module
        # stays dead when the module comes back, so watch_modules() re-attaches
        self.module_probes = {}
        for probe, attach_type, _target in self.attached:
            if probe.module and attach_type in ("kprobe", "kretprobe"):
                probes_of = self.module_probes.setdefault(probe.module, [])
                if probe not in probes_of:
                    probes_of.append(probe)
        self.modules_gone = set()

    def _register_addresses(self, planned):
        """Tell the shared route kprobe programs which function is which."""
        by_address = [p for p in planned if p.by_address]
        if not by_address:
            return
        table = self.bpf["probe_ids"]
        for probe in by_address:
            for address in probe.addresses or probes.symbol_addresses(probe.name):
                for entry in (address, address + 4):   # plain, or past an endbr64
                    table[table.Key(entry)] = table.Leaf(probe.id)

    def _attach(self, probe):
        done = []
        try:
            for attach_type, target, fn_name in probe.attach:
                if attach_type == "kprobe":
                    self.bpf.attach_kprobe(event=target, fn_name=fn_name)
                elif attach_type == "kretprobe":
                    self.bpf.attach_kretprobe(event=target, fn_name=fn_name)
                else:
                    self.bpf.attach_raw_tracepoint(tp=target, fn_name=fn_name)
                done.append((attach_type, target))
        except Exception as e:  # bcc raises plain Exception on attach failure
            for attach_type, target in done:
                self._detach(attach_type, target)
            self.skipped.append((probe.name, "attach failed: %s" % str(e).strip()))
            return
        for attach_type, target in done:
            self.attached.append((probe, attach_type, target))

    def watch_modules(self):
        """Lines to say about probed modules unloaded or loaded again since
        the last call; the probes of a module that is back are attached to
        its new code (and its new addresses told to the shared programs)."""
        if not self.module_probes:
            return []
        live = kernel.live_modules()
        said = []
        for module, module_probes in self.module_probes.items():
            names = ", ".join(p.name for p in module_probes)
            if module not in live and module not in self.modules_gone:
                self.modules_gone.add(module)
                said.append("module %s was unloaded: %s trace nothing until it is loaded "
                            "again" % (module, names))
            elif module in live and module in self.modules_gone:
                self.modules_gone.discard(module)
                said.append(self._reattach(module, module_probes))
        return said

    def _reattach(self, module, module_probes):
        kernel.symbols.cache_clear()           # the module's code moved
        for probe in module_probes:
            for attach_type, target, _fn in probe.attach:
                self._detach(attach_type, target)
        self.attached = [a for a in self.attached if a[0] not in module_probes]
        self._register_addresses(module_probes)
        before = len(self.skipped)
        for probe in module_probes:
            self._attach(probe)
        failed = ["%s (%s)" % pair for pair in self.skipped[before:]]
        text = "module %s is loaded again: re-attached %d of its %d probes" % (
            module, len(module_probes) - len(failed), len(module_probes))
        return text + ("; not %s" % ", ".join(failed) if failed else "")

    def _detach(self, attach_type, target):
        try:
            if attach_type == "kprobe":
                self.bpf.detach_kprobe(event=target)
            elif attach_type == "kretprobe":
                self.bpf.detach_kretprobe(event=target)
            else:
                self.bpf.detach_raw_tracepoint(tp=target)
        except Exception:
            pass

    @property
    def info(self):
        """runinfo.RunInfo: what the session knows of this program."""
        plan = self.program.plan
        return RunInfo(self.program.backend, self.program.probe_names,
                       attached=[_info(p) for p, _t, _x in self.attached],
                       planned=[_info(p) for p in plan.probes],
                       capture_bytes=self.program.capture_bytes)

    def open_reader(self, handle, on_lost, batch=None):
        """A reader.RingBufferReader or PerfBufferReader of the events,
        handle(bytes) per event, on_lost(count) for perf lost records;
        batch: the ring buffer's records many at a time (RingBufferReader)."""
        program = self.program
        return reader.open_reader(self.bpf, program.ring_buffer_pages, program.perf_pages,
                                  handle, on_lost, batch)

    def lost_events(self):
        """Events the kernel could not put into the ring, all CPUs."""
        table = self.bpf["lost_events"]
        return int(table.sum(table.Key(0)).value)

    def close(self):
        if self.bpf is None:
            return
        self.functions.detach()
        self.bpf.cleanup()
        self.bpf = None


def _info(probe):
    return ProbeInfo(probe.name, probe.kind, probe.extra)


class KernelSymbols:
    """Kernel addresses and stacks in words, from a bcc module (cached: stacks repeat)."""

    def __init__(self, bpf):
        self.bpf = bpf
        self._symbols = BoundedCache(self._ksym, limit=65536)  # address -> 'func+0xoff'

    def _ksym(self, address):
        return self.bpf.ksym(address, show_offset=True).decode("ascii", "replace")

    def symbolize(self, address):
        """'func+0xoff' of a kernel address."""
        return self._symbols[address]

    def stack(self, stack_id):
        """Symbols of a kernel stack, innermost first."""
        if stack_id < 0:
            return ["[stack unavailable: %d]" % stack_id]
        try:
            addresses = self.bpf["stacks"].walk(stack_id)
            return [self.symbolize(a) for a in addresses]
        except KeyError:
            return ["[stack lost]"]


def _progress(what, total):
    """tqdm's bar on a terminal, nothing otherwise; None below PROGRESS_MIN."""
    if total < PROGRESS_MIN:
        return None
    from tqdm import tqdm
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
            if ("ROUTE_FUNC_IP" in self.loaded.program.plan.defines
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
