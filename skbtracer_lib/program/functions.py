"""--all and --func: which kernel functions take a struct sk_buff *, where,
and which of them this kernel lets skbtracer kprobe.

From BTF (vmlinux and every loaded module's), checked against the
kernel's own lists: /proc/kallsyms (present, one address), the kprobe
blacklist and ftrace's available_filter_functions (not notrace) where
they are readable."""

import fnmatch
import functools
import os
import re
from dataclasses import dataclass

from . import kernel
from .btf import BTF_DIR

MAX_ARGUMENT = 5      # PT_REGS_PARM1..5 (the sixth is not in a register everywhere)
BLACKLIST = "/sys/kernel/debug/kprobes/blacklist"
# what --func accepts: a function name or a shell-style glob of one
PATTERN = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,128}")


class FunctionError(Exception):
    """A --func that names nothing traceable: exit 2."""


@dataclass
class SkbFunction:
    name: str
    position: int         # 1-based argument index of the struct sk_buff *
    module: str = ""      # '' for vmlinux


def btf_skb_functions(kernel_btf, modules=None):
    """{name: SkbFunction} of every function whose BTF has a struct sk_buff *
    among its first MAX_ARGUMENT parameters, in vmlinux and the given
    modules (default: every module with BTF)."""
    if modules is None:
        modules = sorted(m for m in os.listdir(kernel_btf.dir) if m != "vmlinux")
    found = {}
    for module in [""] + list(modules):
        blob = kernel_btf.module(module) if module else kernel_btf.vmlinux
        if blob is None:
            continue
        for name, params in blob.functions():
            if name in found:
                continue
            for position, (_pname, type_id) in enumerate(params[:MAX_ARGUMENT], 1):
                if blob.pointee_struct(type_id) == ("sk_buff", 1):
                    found[name] = SkbFunction(name, position, module)
                    break
    return found


def _read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return None


def blacklisted():
    """Names in the kernel's kprobe blacklist, or None when unreadable."""
    lines = _read_lines(BLACKLIST)
    if lines is None:
        return None
    return {line.split()[-1] for line in lines if line.strip()}


def ftrace_functions():
    """Names ftrace can trace (available_filter_functions), or None."""
    for base in kernel.TRACEFS_DIRS:
        lines = _read_lines(os.path.join(base, "available_filter_functions"))
        if lines is not None:
            return {line.split()[0] for line in lines if line.strip()}
    return None


@functools.lru_cache(maxsize=1)
def text_symbols():
    """{name: (module, [addresses])} of every text symbol in /proc/kallsyms."""
    with open("/proc/kallsyms") as f:
        text = f.read()
    found = {}
    for address, name, module in re.findall(
            r"^([0-9a-f]+) [tT] ([\w.]+)(?:\t\[(\w+)\])?$", text, re.M):
        entry = found.setdefault(name, (module or "", []))
        entry[1].append(int(address, 16))
    return found


@dataclass
class Selection:
    functions: list        # SkbFunction, sorted by name, to attach
    skipped: list          # (name, reason)
    found: int             # functions with an skb argument in BTF


def check_patterns(patterns):
    """--func values as typed -> the same, or FunctionError for a value
    that cannot be a function name or glob."""
    for pattern in patterns:
        if not PATTERN.fullmatch(pattern):
            raise FunctionError("--func: %r is not a function name or shell-style glob" % pattern)
    return list(patterns)


def match(candidates, patterns):
    """Names among candidates (an iterable) matching any pattern; every
    pattern must match at least one, else FunctionError (naming why)."""
    names = sorted(candidates)
    chosen = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, pattern)
        if not hits:
            raise FunctionError("--func: %r matches no kernel function with a struct sk_buff * "
                                "among its first %d arguments" % (pattern, MAX_ARGUMENT))
        chosen.update(hits)
    return chosen


def select(patterns, everything, exclude=()):
    """The functions to kprobe for --all (everything) and/or --func patterns,
    leaving out names in exclude (already probed another way)."""
    btf = kernel.btf()
    if btf is None:
        raise kernel.KernelError("--all/--func need the kernel's BTF (/sys/kernel/btf/vmlinux) "
                                 "to find the functions that take an skb")
    candidates = btf_skb_functions(btf)
    names = match(candidates, patterns) if patterns else set(candidates)
    if not everything and not patterns:
        names = set()
    symbols = text_symbols()
    denied = blacklisted()
    traceable = ftrace_functions()
    chosen, skipped = [], []
    for name in sorted(names):
        if name in exclude:
            continue
        reason = None
        if name not in symbols:
            reason = "not in /proc/kallsyms (inlined)"
        elif len(symbols[name][1]) > 1:
            reason = "%d symbols of that name" % len(symbols[name][1])
        elif denied is not None and name in denied:
            reason = "in the kprobe blacklist"
        elif traceable is not None and name not in traceable:
            reason = "notrace (not in available_filter_functions)"
        if reason:
            skipped.append((name, reason))
        else:
            function = candidates[name]
            function.module = symbols[name][0]
            chosen.append(function)
    return Selection(chosen, skipped, len(candidates))

