"""Facts about the running kernel that decide how skbtracer is built:
kprobe support, symbols, BTF, tracefs, and a header tree for bcc."""

import functools
import glob
import os
import re
import shutil
import stat
import tempfile

from .btf import KernelBTF, BTFError

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


class KernelError(Exception):
    """Something the kernel or the installed packages lack: exit 1."""


def release():
    return os.uname().release


def version():
    """(major, minor) of the running kernel."""
    match = re.match(r"(\d+)\.(\d+)", release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def kprobes_available():
    """Can kprobes be attached at all? (CONFIG_KPROBES, perf kprobe PMU or
    the legacy kprobe_events file.)"""
    if os.path.isdir("/sys/bus/event_source/devices/kprobe"):
        return True
    return any(os.path.exists(os.path.join(d, "kprobe_events")) for d in TRACEFS_DIRS)


@functools.lru_cache(maxsize=4)
def symbols(names):
    """{name: (module or '', [addresses])} for the text symbols among names
    (a tuple), plus GCC's optimized copies of them (ip_rcv_finish.isra.0)
    under their own names. One regex pass over /proc/kallsyms: a Python loop
    over its ~150k lines costs seconds in an emulated guest. Real addresses
    need root."""
    with open("/proc/kallsyms") as f:
        text = f.read()
    pattern = re.compile(r"^([0-9a-f]+) [tTwW] ((?:%s)(?:\.[\w.]+)?)(?:\t\[(\w+)\])?$"
                         % "|".join(re.escape(n) for n in names), re.M)
    found = {}
    for match in pattern.finditer(text):
        module, addresses = found.setdefault(match.group(2), (match.group(3) or "", []))
        addresses.append(int(match.group(1), 16))
    return found


def live_modules():
    """Names of the loadable modules that are loaded and running now."""
    try:
        with open("/proc/modules") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    return {fields[0] for fields in map(str.split, lines) if len(fields) > 4 and fields[4] == "Live"}


def tracepoint_format(category, event):
    """Text of a tracepoint's format file, or None."""
    for base in TRACEFS_DIRS:
        try:
            with open(os.path.join(base, "events", category, event, "format")) as f:
                return f.read()
        except OSError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def btf():
    """KernelBTF, or None when the kernel has no BTF."""
    if not KernelBTF.available():
        return None
    try:
        return KernelBTF()
    except (OSError, BTFError):
        return None


# --- a header tree for bcc ---------------------------------------------------

class HeaderTree:
    def __init__(self, description, kernel_source=None, cleanup=None, own=True):
        self.description = description
        self.kernel_source = kernel_source   # value for BCC_KERNEL_SOURCE, or None
        self.own = own                       # the running kernel's headers?
        self._cleanup = cleanup

    def close(self):
        if self._cleanup:
            self._cleanup.cleanup()
            self._cleanup = None


def _version_key(path):
    return [int(n) if n.isdigit() else n for n in re.findall(r"\d+|[a-z]+", path)]


def _source_tree_for(build):
    """The tree with include/linux/kconfig.h belonging to a build tree:
    the tree itself, or Debian's split '-common' sibling."""
    if os.path.isfile(os.path.join(build, "include/linux/kconfig.h")):
        return build
    common = re.sub(r"-[a-z0-9]+$", "-common", build.rstrip("/"))
    if os.path.isfile(os.path.join(common, "include/linux/kconfig.h")):
        return common
    return None


def _merge_trees(target, trees):
    """Make target a union of trees, with symlinks, merging directories that
    exist in more than one tree (first tree wins for files)."""
    names = {}
    for tree in trees:
        for name in os.listdir(tree):
            names.setdefault(name, []).append(os.path.join(tree, name))
    for name, paths in names.items():
        dirs = [p for p in paths if os.path.isdir(p)]
        if len(dirs) > 1:
            os.mkdir(os.path.join(target, name))
            _merge_trees(os.path.join(target, name), dirs)
        else:
            os.symlink(paths[0], os.path.join(target, name))


FARM_PREFIX = "skbtracer-headers-"


def remove_stale_header_farms(tmp=None):
    """Merged header trees of skbtracer runs that ended without cleaning up
    (kill -9): named after their pid; removed once that pid is gone. Only
    directories this user owns, never through a symlink."""
    tmp = tmp or tempfile.gettempdir()
    pattern = re.compile(r"^%s(\d+)-" % re.escape(FARM_PREFIX))
    try:
        entries = os.listdir(tmp)
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry)
        if not match:
            continue
        path = os.path.join(tmp, entry)
        try:
            st = os.lstat(path)
            os.kill(int(match.group(1)), 0)
            continue                       # its run is alive
        except ProcessLookupError:
            pass
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            shutil.rmtree(path, ignore_errors=True)


def find_header_tree():
    """Where bcc gets its own includes from. Prefers the running kernel's
    tree; with BTF any installed tree will do, since struct layouts come
    from BTF and bcc only needs its helper headers to compile."""
    own = "/lib/modules/%s" % release()
    if os.path.isdir(os.path.join(own, "build")):
        return HeaderTree("%s/build (the running kernel's headers)" % own)
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return HeaderTree("/sys/kernel/kheaders.tar.xz (the kernel's built-in headers)")
    builds = [d for d in glob.glob("/usr/src/linux-headers-*")
              if os.path.isfile(os.path.join(d, "include/generated/autoconf.h"))]
    for build in sorted(builds, key=_version_key, reverse=True):
        source = _source_tree_for(build)
        if not source:
            continue
        if source == build:
            return HeaderTree("%s (headers of another kernel)" % build, build, own=False)
        remove_stale_header_farms()
        farm = tempfile.TemporaryDirectory(prefix="%s%d-" % (FARM_PREFIX, os.getpid()))
        _merge_trees(farm.name, [build, source])
        return HeaderTree("%s + %s (headers of another kernel)" % (build, source),
                          farm.name, farm, own=False)
    raise KernelError(
        "no kernel header tree for bcc: install linux-headers-%s "
        "(or, when the kernel has BTF, any linux-headers package)" % release())
