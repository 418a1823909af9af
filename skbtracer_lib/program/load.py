"""The program compiled by bcc, its probes attached (and re-attached when a
probed module comes back), its maps read."""

import errno
import os

from . import kernel, macros, probes, recorder, tp_btf
from .attach import FunctionProbes
from ..events import reader
from ..events.decode import BoundedCache
from ..runinfo import ProbeInfo, RunInfo


class Loaded:
    """A compiled program with its probes attached."""

    def __init__(self, program, headers):
        """Compiled and attached; where the kernel refuses the tracepoints'
        tp_btf programs, compiled again with raw tracepoints
        (self.program is then that program)."""
        if headers.kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = headers.kernel_source
        try:
            self._load(program)
        except tp_btf.TpBtfError as e:
            self.close()
            self._load(program.with_raw_tracepoints(str(e)))

    def _load(self, program):
        from bcc import BPF   # imported late: flag errors need no bcc
        self.program = program
        self.attached = []     # (probe, type, target)
        self.skipped = list(program.plan.skipped)
        self.tp_btf_fds = {}   # tracepoint: (program fd, link fd)
        self.sweep = None      # --slow: recorder.Sweep, once asked for
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
        table = self.bpf[macros.MAP_PROBE_IDS]
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
                elif attach_type == tp_btf.TP_BTF:
                    self._attach_tp_btf(target, fn_name)
                else:
                    self.bpf.attach_raw_tracepoint(tp=target, fn_name=fn_name)
                done.append((attach_type, target))
        except tp_btf.TpBtfError:
            raise       # the whole program again with raw tracepoints (__init__)
        except Exception as e:  # bcc raises plain Exception on attach failure
            for attach_type, target in done:
                self._detach(attach_type, target)
            self.skipped.append((probe.name, "attach failed: %s" % str(e).strip()))
            return
        for attach_type, target in done:
            self.attached.append((probe, attach_type, target))

    def _attach_tp_btf(self, event, fn_name):
        prog = tp_btf.load(self.bpf, fn_name, event)
        try:
            self.tp_btf_fds[event] = (prog, tp_btf.attach(prog, event))
        except tp_btf.TpBtfError:
            os.close(prog)
            raise

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
            elif attach_type == tp_btf.TP_BTF:
                for fd in reversed(self.tp_btf_fds.pop(target)):
                    os.close(fd)
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

    def recorder_counts(self):
        """--on-trouble: recorder.Counts.read(), troubles told and skbs forgotten."""
        return recorder.Counts(self.bpf, self.sweep).read()

    def recorder_sweep(self, slow_ns, tell):
        """--slow: the recorder's recorder.Sweep, telling tell(raw) the rows
        of stuck skbs (made once)."""
        if self.sweep is None:
            self.sweep = recorder.Sweep(self.bpf, slow_ns,
                                        recorder.arrived_probes(self.program.plan.probes), tell)
        return self.sweep

    def lost_events(self):
        """Events the kernel could not put into the ring, all CPUs."""
        table = self.bpf[macros.MAP_LOST_EVENTS]
        return int(table.sum(table.Key(0)).value)

    def close(self):
        if self.bpf is None:
            return
        for target in list(self.tp_btf_fds):
            self._detach(tp_btf.TP_BTF, target)
        self.functions.detach()
        self.bpf.cleanup()
        self.bpf = None


def _info(probe):
    return ProbeInfo(probe.name, probe.kind, probe.extra)


# bpf_get_stackid()'s errors. Stacks are stored by hash and never replaced
# (the rows keep a stack id's lines for the whole run): a stack whose hash
# slot holds another one is EEXIST, for the rest of the run.
STACK_ERRORS = {errno.EEXIST: "its slot in the stack map holds another stack",
                errno.ENOMEM: "the stack map is full",
                errno.EFAULT: "the stack could not be walked"}


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
            reason = STACK_ERRORS.get(-stack_id)
            return ["[stack unavailable: %d%s]" % (stack_id, ", " + reason if reason else "")]
        try:
            addresses = self.bpf[macros.MAP_STACKS].walk(stack_id)
            return [self.symbolize(a) for a in addresses]
        except KeyError:
            return ["[stack lost]"]
