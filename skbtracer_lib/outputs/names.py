"""Network namespace inodes -> names people recognise.

An inode is named, in this order of preference, by
  - its `ip netns` name (a bind mount in /run/netns),
  - "host" for the namespace pid 1 lives in (when skbtracer runs there too),
  - the pod (pod:<uid>) or container (ctr:<id>) of a process that lives in
    it, read from the process's cgroup path,
  - "pid:<pid>" of such a process otherwise.
Namespaces come and go while skbtracer runs: an inode is looked up the first
time an event carries it (lookup()), and inodes that could not be named then
are tried again at most every RETRY_SECONDS (retry(), from the poll loop,
not from the per-event path) and once more at exit. The kernel gives a new
namespace the lowest free inode number, so a deleted namespace's number is
soon another's: whenever the directory changes, the names read from it
are read again in one scan (forget_if_changed(), before each read of the
ring); a name no longer there is dropped, and looked up again when next seen.
"""

import os
import re
import time
from dataclasses import dataclass

from ..events.decode import printable

NETNS_DIRS = ("/run/netns",)
RETRY_SECONDS = 2.0

# cgroup paths of container runtimes:
#   /system.slice/docker-<64 hex>.scope, /docker/<64 hex>
#   /kubepods/besteffort/pod<uid>/<64 hex>
#   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/
#       cri-containerd-<64 hex>.scope
_CONTAINER_RE = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
_POD_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
                     r"[-_][0-9a-f]{12})")


def _as_data(file_name):
    """A name someone else chose, safe for a column: undecodable bytes and
    control characters escaped (names are data, not formatting)."""
    text = file_name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return printable(text)


@dataclass
class NetnsInfo:
    inode: int
    name: str = None            # `ip netns` name
    pid: int = None             # a process living in the namespace
    container_id: str = None
    pod_uid: str = None
    host: bool = False

    @property
    def label(self):
        """Short text for a column; None when nothing is known."""
        if self.name:
            return self.name
        if self.host:
            return "host"
        if self.pod_uid:
            return "pod:%s" % self.pod_uid
        if self.container_id:
            return "ctr:%s" % self.container_id[:12]
        if self.pid:
            return "pid:%d" % self.pid
        return None

    def as_json(self):
        return {"netns_name": self.label, "container_id": self.container_id,
                "pod_uid": self.pod_uid}


def container_of(cgroup_text):
    """(container_id, pod_uid) from the text of /proc/PID/cgroup; None where absent."""
    container = pod = None
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        found = _CONTAINER_RE.findall(path)
        if found and container is None:
            container = found[-1]
        match = _POD_RE.search(path)
        if match and pod is None:
            pod = match.group(1).replace("_", "-")
    return container, pod


def _entries(directory):
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


class NetnsNames:
    """inode -> NetnsInfo, cached. proc and netns_dirs are parameters for tests."""

    def __init__(self, proc="/proc", netns_dirs=NETNS_DIRS, clock=time.monotonic):
        self.proc = proc
        self.netns_dirs = netns_dirs
        self.clock = clock
        self._info = {0: NetnsInfo(0)}     # inode 0: the event had no device or socket
        self.labels = {0: "0"}             # inode -> label text (the hot path reads this)
        self.unresolved = set()
        self._last_scan = None
        self._dirs_seen = self._dir_stamps()
        self.host_inode = None
        try:
            pid1 = os.stat(os.path.join(proc, "1", "ns", "net")).st_ino
            if pid1 == os.stat(os.path.join(proc, "self", "ns", "net")).st_ino:
                self.host_inode = pid1
        except OSError:
            pass

    # -- the per-event path: a dict lookup, a scan only for an inode never seen

    def label(self, inode):
        """Column text for inode: its name, else the inode number."""
        text = self.labels.get(inode)
        if text is None:
            text = self._resolve(inode)
        return text

    def lookup(self, inode):
        """NetnsInfo for inode (resolved on first sight)."""
        info = self._info.get(inode)
        if info is None:
            self._resolve(inode)
            info = self._info[inode]
        return info

    def path(self, inode):
        """A path that opens namespace inode now (its `ip netns` bind mount,
        or a process's /proc/PID/ns/net), or None."""
        candidates = [os.path.join(d, entry) for d in self.netns_dirs for entry in _entries(d)]
        info = self.lookup(inode)
        if info.pid:
            candidates.append(os.path.join(self.proc, str(info.pid), "ns", "net"))
        for candidate in candidates:
            try:
                if os.stat(candidate).st_ino == inode:
                    return candidate
            except OSError:
                continue
        return None

    def _resolve(self, inode):
        info = self._scan({inode}).get(inode) or NetnsInfo(inode)
        self._remember(info)
        return self.labels[inode]

    def _remember(self, info):
        inode = info.inode
        self._info[inode] = info
        label = info.label
        self.labels[inode] = label if label else str(inode)
        if label:
            self.unresolved.discard(inode)
        else:
            self.unresolved.add(inode)

    # -- off the per-event path

    def _dir_stamps(self):
        stamps = []
        for directory in self.netns_dirs:
            try:
                st = os.stat(directory)
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return stamps

    def forget_if_changed(self):
        """If a netns directory changed since the last call (one stat each),
        read the names taken from them again, in one scan: a number whose
        name went is dropped, one that has another name now gets it. A change
        within the same clock tick as the previous one (a few ms) can go
        unnoticed until the next."""
        stamps = self._dir_stamps()
        if stamps == self._dirs_seen:
            return
        self._dirs_seen = stamps
        named = {inode for inode, info in self._info.items() if info.name}
        now = self._scan_dirs(named)
        for inode in named:
            if inode in now:
                self._remember(now[inode])
            else:
                del self._info[inode]
                del self.labels[inode]     # in place: the story's book holds this dict

    def retry(self, force=False):
        """Look again for inodes that had no name (rate limited unless force)."""
        if not self.unresolved:
            return
        now = self.clock()
        if not force and self._last_scan is not None and now - self._last_scan < RETRY_SECONDS:
            return
        found = self._scan(set(self.unresolved))
        for info in found.values():
            if info.label:
                self._remember(info)

    def _scan(self, wanted):
        """{inode: NetnsInfo} for the wanted inodes found now."""
        self._last_scan = self.clock()
        found = self._scan_dirs(wanted)
        missing = wanted - set(found)
        for inode in list(missing):
            if inode == self.host_inode:
                found[inode] = NetnsInfo(inode, host=True, pid=1)
                missing.discard(inode)
        if missing:
            self._scan_processes(missing, found)
        return found

    def _scan_dirs(self, wanted):
        """{inode: NetnsInfo} for the wanted inodes that have an `ip netns` name now."""
        found = {}
        for directory in self.netns_dirs:
            for entry in _entries(directory):
                try:
                    inode = os.stat(os.path.join(directory, entry)).st_ino
                except OSError:
                    continue
                if inode in wanted and inode not in found:
                    found[inode] = NetnsInfo(inode, name=_as_data(entry))
        return found

    def _scan_processes(self, missing, found):
        try:
            pids = [p for p in os.listdir(self.proc) if p.isdigit()]
        except OSError:
            return
        for pid in sorted(pids, key=int):
            try:
                inode = os.stat(os.path.join(self.proc, pid, "ns", "net")).st_ino
            except OSError:
                continue        # exited meanwhile, or a kernel thread we cannot see
            if inode not in missing:
                continue
            container = pod = None
            try:
                with open(os.path.join(self.proc, pid, "cgroup")) as f:
                    container, pod = container_of(f.read())
            except OSError:
                pass
            info = found.get(inode)
            if info is None:
                found[inode] = NetnsInfo(inode, pid=int(pid), container_id=container, pod_uid=pod)
            elif container and not info.container_id:
                # prefer a process that names its container
                info.pid, info.container_id, info.pod_uid = int(pid), container, pod
            if found[inode].container_id:
                missing.discard(inode)
                if not missing:
                    return
