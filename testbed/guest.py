"""Run commands inside one of Debian's kernels, booted under qemu.

The host kernel has no kprobes, so anything that needs them runs in a guest:
Debian's own kernel ("flavour" 6.1, 5.10 or 6.12) booted by qemu with TCG,
the host's / shared read-only over 9p under a tmpfs overlay (so every host
path, the repo included, is visible at the same place), and a second,
writable 9p share that carries the command in and its output out.

    from testbed.guest import run
    r = run("uname -r", flavour="6.1")
    r.returncode, r.stdout, r.stderr, r.seconds

    /usr/bin/python3 -m testbed.guest [--flavour 6.1] -- CMD ARGS...
    /usr/bin/python3 -m testbed.guest --prepare 6.1 5.10 6.12
    /usr/bin/python3 -m testbed.guest --list

Kernels, module trees and initramfs images are cached in <repo>/.cache/guest/.
Nothing the guest writes reaches the host except the command's stdout, stderr
and exit code: its writes land in a tmpfs overlay that dies with it. In the
guest, TESTBED_GUEST is set to the flavour, and /lib/modules/$(uname -r) holds
the kernel's modules with build/source links to its headers (for bcc).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "guest"
SCRIPTS = Path(__file__).resolve().parent / "guest"

QEMU = "qemu-system-x86_64"
QBOOT = "/usr/share/qemu/qboot.rom"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Bump when the cache layout or the initramfs changes, to rebuild old caches.
CACHE_FORMAT = 1

# Modules the initramfs needs to reach the root; modprobe adds dependencies.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# mitigations=off: TCG emulates no speculation, and page-table isolation
# would flush qemu's soft TLB on every syscall.
KERNEL_ARGS = "console=ttyS0 rdinit=/init panic=-1 mitigations=off loglevel=4"

# Return codes when the command's own could not be had.
RC_TIMEOUT = 124
RC_GUEST_FAILED = 125


@dataclasses.dataclass(frozen=True)
class Flavour:
    name: str
    suite: str  # Debian suite that carries this kernel
    release_re: str  # a kernel release (uname -r) of this flavour
    # Go with the header packages installed in /usr/src (the host's own
    # Debian release) rather than download them; the image must match them.
    installed_headers: bool = False


FLAVOURS = {
    "6.1": Flavour("6.1", "bookworm", r"6\.1\.0-\d+-amd64", installed_headers=True),
    "5.10": Flavour("5.10", "bullseye", r"5\.10\.0-\d+-amd64"),
    "6.12": Flavour("6.12", "trixie", r"6\.12\.\d+\+deb13(?:\.\d+)?-amd64"),
}


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A prepared (cached) flavour: everything needed to boot it."""

    flavour: str
    release: str
    kernel: Path  # ELF vmlinux booted via PVH, or the bzImage as a fallback
    initramfs: Path
    modules: Path  # depmod'ed lib/modules/<release>, with build and source links
    build: Path  # header trees bcc uses, through modules/build and modules/source
    source: Path


@dataclasses.dataclass
class GuestResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # wall time of the whole run, boot included
    boot_seconds: float | None = None  # qemu start until the command started
    timed_out: bool = False
    console: str = ""  # the guest's kernel log (serial console)
    failure: str = ""  # why there is no exit code of the command's (also in stderr)


class PrepareError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# Fetch and cache


def prepare(flavour: str = "6.1") -> Kernel:
    """Return the cached kernel of a flavour, fetching and building it if needed."""
    fl = _flavour(flavour)
    d = CACHE / fl.name
    d.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / f"{fl.name}.lock"):
        kernel = _load(fl)
        if kernel is None:
            kernel = _build(fl)
        _ensure_header_links(kernel)
        _ensure_initramfs(kernel)
        return kernel


def cached(flavour: str) -> Kernel | None:
    """The cached kernel of a flavour, or None; never downloads."""
    fl = _flavour(flavour)
    with _locked(CACHE / f"{fl.name}.lock"):
        return _load(fl)


def _flavour(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(f"unknown flavour {name!r}; known: {', '.join(FLAVOURS)}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Concurrent runs (pytest-xdist, CI) must not build the same cache twice.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(fl: Flavour) -> Kernel | None:
    """The cached kernel if its completeness marker (meta.json) is there and valid."""
    d = CACHE / fl.name
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT:
        return None
    # 6.1 goes with the installed headers: if they changed, so must the kernel.
    if meta["headers"] == "system" and _system_release(fl) != meta["release"]:
        return None
    k = _kernel(fl, meta["release"], meta["kernel"], meta["headers"])
    needed = (k.kernel, k.modules / "modules.dep", k.build, k.source)  # initramfs: _ensure_initramfs
    return k if all(p.exists() for p in needed) else None


def _kernel(fl: Flavour, release: str, kernel_name: str, headers: str) -> Kernel:
    d = CACHE / fl.name
    if headers == "system":
        build, source = _system_header_trees(release)
    else:
        build, source = _cached_header_trees(d / "root", release)
    return Kernel(
        flavour=fl.name,
        release=release,
        kernel=d / kernel_name,
        initramfs=d / "initramfs.cpio",
        modules=d / "root" / "lib" / "modules" / release,
        build=build,
        source=source,
    )


def _build(fl: Flavour) -> Kernel:
    d = CACHE / fl.name
    # Whatever is here is from an interrupted build: start over (debs excepted).
    (d / "meta.json").unlink(missing_ok=True)
    for p in [d / "root", d / "vmlinux", d / "bzImage", d / "initramfs.cpio", d / "initramfs.key", *d.glob("*.partial-*")]:
        _remove(p)

    release = _system_release(fl)
    if release is not None:
        headers = "system"
        pkgs = [f"linux-image-{release}"]
    else:
        headers = "cache"
        release = _apt_latest_release(fl)
        common = _common_name(release)
        pkgs = [f"linux-image-{release}", f"linux-headers-{release}", f"linux-headers-{common}"]

    debs = _download(fl, pkgs, d / "debs", use_system_apt=headers == "system")

    root_tmp = _partial(d / "root")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root_tmp)])
    _normalise_modules_dir(root_tmp, release)
    _run([_tool("depmod"), "-b", str(root_tmp), release])
    if headers == "cache":
        _fix_header_trees(root_tmp, d / "root", release)
    root_tmp.rename(d / "root")
    root = d / "root"

    kernel_name = _extract_kernel(root / "boot" / f"vmlinuz-{release}", d)
    kernel = _kernel(fl, release, kernel_name, headers)
    _ensure_initramfs(kernel)
    _ensure_header_links(kernel)
    meta = {"format": CACHE_FORMAT, "release": release, "kernel": kernel_name, "headers": headers}
    _write_atomic(d / "meta.json", json.dumps(meta, indent=1).encode())
    # The extracted tree is all we need; the packages would double the cache.
    _remove(d / "debs")
    return kernel


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        # ignore_errors: a killed run's dpkg-deb may still be writing there.
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _partial(path: Path) -> Path:
    """Where to build `path` before renaming it into place.

    Named per process so that a leftover writer from a killed run (dpkg-deb's
    own children outlive it briefly) cannot disturb this one.
    """
    return path.with_name(f"{path.name}.partial-{os.getpid()}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _partial(path)
    tmp.write_bytes(data)
    tmp.rename(path)


def _child(argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    """subprocess.run, output captured; the child dies with us (no orphaned apt holding its locks)."""
    return subprocess.run(argv, capture_output=True, preexec_fn=_die_with_parent, **kw)


def _run(argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
    p = _child(argv, text=True, **kw)
    if p.returncode != 0:
        raise PrepareError(f"{shlex.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def _tool(name: str) -> str:
    # kmod's tools live in /usr/sbin, which a non-login PATH may lack.
    for d in ("/usr/sbin", "/sbin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return shutil.which(name) or name


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def _common_name(release: str) -> str:
    return release.removesuffix("-amd64") + "-common"


def _system_release(fl: Flavour) -> str | None:
    """Newest release of this flavour whose headers are installed in /usr/src, if it goes with those."""
    if not fl.installed_headers:
        return None
    found = []
    for p in Path("/usr/src").glob("linux-headers-*-amd64"):
        release = p.name.removeprefix("linux-headers-")
        if re.fullmatch(fl.release_re, release) and (p.parent / f"linux-headers-{_common_name(release)}").is_dir():
            found.append(release)
    return max(found, key=_version_key, default=None)


def _system_header_trees(release: str) -> tuple[Path, Path]:
    return Path(f"/usr/src/linux-headers-{release}"), Path(f"/usr/src/linux-headers-{_common_name(release)}")


def _cached_header_trees(root: Path, release: str) -> tuple[Path, Path]:
    src = root / "usr" / "src"
    return src / f"linux-headers-{release}", src / f"linux-headers-{_common_name(release)}"


# ---- apt


def _apt_dir(suite: str) -> Path:
    return CACHE / "apt" / suite


def _apt_options(suite: str) -> list[str]:
    """A private apt configuration: own sources, state and cache; the system's are untouched."""
    d = _apt_dir(suite)
    opts = {
        "Dir::Etc::SourceList": d / "sources.list",
        "Dir::Etc::SourceParts": d / "sources.list.d",
        "Dir::Etc::Preferences": d / "preferences",
        "Dir::Etc::PreferencesParts": d / "preferences.d",
        "Dir::State": d / "state",
        "Dir::State::status": d / "state" / "status",
        "Dir::Cache": d / "cache",
        "Acquire::Languages": "none",
        # Our dirs are root's; apt's _apt sandbox user could not write them.
        "APT::Sandbox::User": "root",
    }
    return [arg for k, v in opts.items() for arg in ("-o", f"{k}={v}")]


_apt_updated: set[str] = set()  # suites whose lists this process fetched


def _apt_update(suite: str) -> None:
    if suite in _apt_updated:
        return
    d = _apt_dir(suite)
    for sub in ("sources.list.d", "preferences.d", "state/lists/partial", "cache/archives/partial"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "state" / "status").touch()
    signed = f"[signed-by={KEYRING}]"
    (d / "sources.list").write_text(
        f"deb {signed} {MIRROR} {suite} main\n"
        # Kernel updates land in the security suite first; newest headers too.
        f"deb {signed} {SECURITY_MIRROR} {suite}-security main\n"
    )
    p = _child(["apt-get", *_apt_options(suite), "update"], text=True)
    if p.returncode != 0:
        raise PrepareError(f"apt-get update for {suite} failed: {p.stderr.strip()[-2000:]}")
    _apt_updated.add(suite)


def _apt_latest_release(fl: Flavour) -> str:
    """Newest release of the flavour for which image and both header packages exist."""
    _apt_update(fl.suite)
    names = set(_child(["apt-cache", *_apt_options(fl.suite), "pkgnames", "linux-"], text=True).stdout.split())
    releases = [
        n.removeprefix("linux-image-")
        for n in names
        if n.startswith("linux-image-") and re.fullmatch(fl.release_re, n.removeprefix("linux-image-"))
    ]
    usable = [
        r for r in releases if f"linux-headers-{r}" in names and f"linux-headers-{_common_name(r)}" in names
    ]
    if not usable:
        raise PrepareError(f"no linux-image/linux-headers pair matching {fl.release_re} in {fl.suite}")
    return max(usable, key=_version_key)


def _download(fl: Flavour, pkgs: list[str], dest: Path, use_system_apt: bool) -> list[Path]:
    """Download the packages into dest (reused if an earlier run got them all)."""

    def debs(d: Path) -> list[Path] | None:
        found = [min(d.glob(f"{p}_*.deb"), default=None) for p in pkgs]
        return None if None in found else found  # type: ignore[return-value]

    if dest.is_dir() and (got := debs(dest)):
        return got
    # Download next to dest and rename only a complete set: an interrupted
    # download leaves a .partial-* dir that the next build discards.
    tmp = _partial(dest)
    tmp.mkdir(parents=True)
    errors = []
    if use_system_apt:
        p = _child(["apt-get", "download", *pkgs], cwd=tmp, text=True)
        if p.returncode != 0:
            errors.append(f"system apt: {p.stderr.strip()[-1000:]}")
    if not use_system_apt or errors:
        _apt_update(fl.suite)
        p = _child(["apt-get", *_apt_options(fl.suite), "download", *pkgs], cwd=tmp, text=True)
        if p.returncode != 0:
            errors.append(f"apt ({fl.suite}): {p.stderr.strip()[-1000:]}")
            raise PrepareError(f"cannot download {' '.join(pkgs)}: " + " | ".join(errors))
    got = debs(tmp)
    if got is None:
        raise PrepareError(f"apt-get download did not produce all of {' '.join(pkgs)}")
    _remove(dest)
    tmp.rename(dest)
    return [dest / p.name for p in got]


# ---- kernel, modules, headers


def _normalise_modules_dir(root: Path, release: str) -> None:
    # trixie ships modules in /usr/lib/modules; depmod -b looks in <base>/lib/modules.
    usr = root / "usr" / "lib" / "modules" / release
    lib = root / "lib" / "modules" / release
    if usr.is_dir() and not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        usr.rename(lib)
    if not lib.is_dir():
        raise PrepareError(f"no module tree for {release} in the image package")
    # The packages' own build/source links point at /usr/src, i.e. the host's.
    for name in ("build", "source"):
        _remove(lib / name)


def _fix_header_trees(root: Path, final_root: Path, release: str) -> None:
    """Make the downloaded header trees self-contained at their final place in the cache.

    The -amd64 tree refers to its -common tree by absolute /usr/src paths
    (the Makefile's include, possibly links); point those into the cache.
    Relative links between the two trees resolve already, as both sit in
    root/usr/src.
    """
    src = root / "usr" / "src"
    final_src = final_root / "usr" / "src"
    for tree in (src / f"linux-headers-{release}", src / f"linux-headers-{_common_name(release)}"):
        if not tree.is_dir():
            raise PrepareError(f"header tree {tree.name} missing from the packages")
        for dirpath, dirnames, filenames in os.walk(tree):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    target = os.readlink(p)
                    if target.startswith("/usr/src/"):
                        p.unlink()
                        p.symlink_to(str(final_src) + target.removeprefix("/usr/src"))
        makefile = tree / "Makefile"
        if makefile.is_file():
            text = makefile.read_text()
            makefile.write_text(text.replace("/usr/src/", f"{final_src}/"))


def _ensure_header_links(kernel: Kernel) -> None:
    """modules/build and modules/source: where bcc looks for this kernel's headers.

    Absolute links, since the guest sees the tree bind-mounted at
    /lib/modules/<release> where a relative link would resolve elsewhere;
    re-made on every prepare in case the repo moved.
    """
    for name, target in (("build", kernel.build), ("source", kernel.source)):
        link = kernel.modules / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        _remove(link)
        link.symlink_to(target)


def _extract_kernel(vmlinuz: Path, dest_dir: Path) -> str:
    """Extract the ELF vmlinux from the bzImage; return the file name to boot.

    Decompressing the bzImage costs ~3 s per boot under TCG; qemu boots the
    ELF directly through its PVH entry point. Falls back to the bzImage when
    the payload cannot be decompressed here or the ELF has no PVH entry.
    """
    data = vmlinuz.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        raise PrepareError(f"{vmlinuz} is not a bzImage")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = data[start : start + payload_length]
    elf = None
    if payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.LZMADecompressor().decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        elf = zlib.decompressobj(wbits=31).decompress(payload)
    elif payload.startswith(b"\x28\xb5\x2f\xfd") and shutil.which("zstd"):
        # No zstd in Python 3.11's stdlib; the payload ends with a 4-byte size, not a frame.
        p = _child(["zstd", "-dc"], input=payload[:-4])
        elf = p.stdout if p.returncode == 0 else None
    if elf and elf.startswith(b"\x7fELF") and _has_pvh_note(elf):
        _write_atomic(dest_dir / "vmlinux", elf)
        return "vmlinux"
    _write_atomic(dest_dir / "bzImage", data)
    return "bzImage"


def _has_pvh_note(elf: bytes) -> bool:
    """Whether a 64-bit ELF kernel has XEN_ELFNOTE_PHYS32_ENTRY, the PVH entry qemu uses."""
    e_phoff, = struct.unpack_from("<Q", elf, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(e_phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", elf, e_phoff + i * e_phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _is_static_elf(path: Path) -> bool:
    try:
        elf = path.read_bytes()
    except OSError:
        return False
    if not elf.startswith(b"\x7fELF") or elf[4] != 2:
        return False
    e_phoff, = struct.unpack_from("<Q", elf, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 0x36)
    types = [struct.unpack_from("<I", elf, e_phoff + i * e_phentsize)[0] for i in range(e_phnum)]
    return 3 not in types  # PT_INTERP: dynamically linked


def static_busybox() -> Path:
    """busybox-static's binary (the guest runs it from the host root too)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox"):
        p = Path(candidate)
        if _is_static_elf(p):
            return p.resolve()
    raise PrepareError("no static busybox found: install busybox-static")


def _ensure_initramfs(kernel: Kernel) -> None:
    """(Re)build the initramfs when missing or when what goes into it changed (init.sh, say)."""
    stamp = kernel.initramfs.with_name("initramfs.key")
    key = hashlib.sha256(
        repr((CACHE_FORMAT, BOOT_MODULES, str(static_busybox()))).encode() + (SCRIPTS / "init.sh").read_bytes()
    ).hexdigest()
    if kernel.initramfs.exists() and stamp.exists() and stamp.read_text() == key:
        return
    root = kernel.modules.parent.parent.parent
    _write_atomic(kernel.initramfs, _initramfs(root, kernel.release))
    _write_atomic(stamp, key.encode())


def _initramfs(root: Path, release: str) -> bytes:
    """A cpio (newc) archive: static busybox, /init and the boot modules."""
    p = _run([_tool("modprobe"), "-d", str(root), "-S", release, "--show-depends", "-a", *BOOT_MODULES])
    modules: list[Path] = []
    for line in p.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "insmod" and Path(words[1]) not in modules:
            modules.append(Path(words[1]))
    files: list[tuple[str, int, bytes]] = [
        ("bin/busybox", 0o100755, static_busybox().read_bytes()),
        ("init", 0o100755, (SCRIPTS / "init.sh").read_bytes()),
    ]
    for i, ko in enumerate(modules):
        files.append((f"mods/{i:02d}-{ko.name.split('.ko')[0]}.ko", 0o100644, _module_bytes(ko)))
    dirs = ["bin", "dev", "mods", "proc", "sys"]
    return _cpio(dirs, files, devices=[("dev/console", 0o020600, 5, 1)])


def _module_bytes(ko: Path) -> bytes:
    # busybox's insmod wants plain ELF; trixie ships .ko.xz.
    data = ko.read_bytes()
    if ko.name.endswith(".xz"):
        return lzma.decompress(data)
    if ko.name.endswith(".zst"):
        return _run_bytes(["zstd", "-dc", str(ko)])
    if ko.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _run_bytes(argv: list[str]) -> bytes:
    p = _child(argv)
    if p.returncode != 0:
        raise PrepareError(f"{shlex.join(argv)} failed: {p.stderr.decode(errors='replace')[-1000:]}")
    return p.stdout


def _cpio(dirs: list[str], files: list[tuple[str, int, bytes]], devices=()) -> bytes:
    """Write a cpio 'newc' archive, the format the kernel unpacks as initramfs."""
    out = bytearray()
    ino = 1

    def entry(name: str, mode: int, data: bytes = b"", nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal ino
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        out.extend(b"070701" + "".join(f"{v:08x}" for v in fields).encode())
        out.extend(name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))
        ino += 1

    for d in dirs:
        entry(d, 0o040755, nlink=2)
    for name, mode, data in files:
        entry(name, mode, data)
    for name, mode, major, minor in devices:
        entry(name, mode, rdev=(major, minor))
    entry("TRAILER!!!", 0)
    return bytes(out)


# --------------------------------------------------------------------------
# Run


def run(
    command: str | Sequence[str],
    flavour: str = "6.1",
    timeout: float = 900,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    memory_mb: int = 2048,
    *,
    stream: bool = False,
) -> GuestResult:
    """Boot the flavour's kernel, run command with /bin/sh -c in it, power off.

    command: a shell string, or an argv list (quoted for the shell).
    cwd: directory to run in (default: ours; the host's paths are the guest's).
    env: extra environment on top of the guest's PATH, HOME, LANG.
    stream: copy the command's output to our stdout/stderr as it comes.
    The timeout covers boot and command. No qemu outlives this call: it is
    killed on timeout, on any exception (KeyboardInterrupt included; SIGTERM
    and SIGHUP become Terminated while run() is in the main thread), and by
    the kernel if this process dies. When the command's exit code cannot be
    had, returncode is RC_TIMEOUT (124) or RC_GUEST_FAILED (125) and stderr
    ends with the reason and the tail of the kernel log (also in .failure).
    Raises PrepareError if the flavour cannot be fetched.
    """
    if not isinstance(command, str):
        command = shlex.join(command)
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    kernel = prepare(flavour)
    start = time.monotonic()
    with _terminate_as_exception(), tempfile.TemporaryDirectory(prefix="testbed-guest-") as tmp:
        share = Path(tmp) / "share"
        share.mkdir()
        _write_share(share, kernel, command, cwd, env or {})
        console = Path(tmp) / "console.log"
        qemu_log = Path(tmp) / "qemu.log"
        argv = _qemu_argv(kernel, share, console, memory_mb)
        timed_out = False
        boot_seconds = None
        tails = {"stdout": 0, "stderr": 0}
        rc_seen = None
        proc = None
        try:
            with open(qemu_log, "wb") as log:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
                )
            while proc.poll() is None:
                now = time.monotonic()
                if boot_seconds is None and (share / "started").exists():
                    boot_seconds = now - start
                if stream:
                    _stream(share, tails)
                if rc_seen is None and (share / "rc").exists():
                    rc_seen = now
                # The guest powers off right after writing rc; don't wait on a hung poweroff.
                if rc_seen is not None and now - rc_seen > 10:
                    break
                if now - start > timeout:
                    timed_out = True
                    break
                time.sleep(0.05)
        finally:
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()  # our own child, by PID
                proc.wait()
        if stream:
            _stream(share, tails)
        seconds = time.monotonic() - start
        if boot_seconds is None and (share / "started").exists():
            boot_seconds = seconds
        stdout = _read_text(share / "stdout")
        stderr = _read_text(share / "stderr")
        log_text = _read_text(console)
        rc_text = _read_text(share / "rc").strip()
        failure = ""
        if rc_text.lstrip("-").isdigit():
            returncode = int(rc_text)
        else:
            returncode = RC_TIMEOUT if timed_out else RC_GUEST_FAILED
            why = f"timed out after {timeout:g} s" if timed_out else f"guest ended without an exit code (qemu exit {proc.returncode})"
            tail = "\n".join(log_text.splitlines()[-60:])
            qemu_text = _read_text(qemu_log).strip()
            failure = f"[testbed.guest] {why}; flavour {flavour} ({kernel.release})\n"
            if qemu_text:
                failure += f"[testbed.guest] qemu said:\n{qemu_text[-2000:]}\n"
            failure += f"[testbed.guest] kernel log tail:\n{tail}\n"
            stderr += "\n" + failure
        return GuestResult(returncode, stdout, stderr, seconds, boot_seconds, timed_out, log_text, failure)


def _write_share(share: Path, kernel: Kernel, command: str, cwd: str, env: Mapping[str, str]) -> None:
    params = {
        "FLAVOUR": kernel.flavour,
        "KVER": kernel.release,
        "MODDIR": str(kernel.modules),
        "BUSYBOX": str(static_busybox()),
        "CWD": cwd,
    }
    (share / "params.sh").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in params.items()))
    for k in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise ValueError(f"bad environment variable name {k!r}")
    (share / "env.sh").write_text("".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items()))
    (share / "command").write_text(command)
    shutil.copy(SCRIPTS / "stage2.sh", share / "stage2.sh")


def _qemu_argv(kernel: Kernel, share: Path, console: Path, memory_mb: int) -> list[str]:
    def esc(path: Path) -> str:
        return str(path).replace(",", ",,")  # qemu option values escape commas by doubling

    return [
        QEMU,
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-smp", "2",
        "-m", str(memory_mb),
        "-bios", QBOOT,
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-nic", "none",
        "-serial", f"file:{console}",
        "-no-reboot",  # a panic (panic=-1) or reboot ends qemu
        "-kernel", str(kernel.kernel),
        "-initrd", str(kernel.initramfs),
        "-append", KERNEL_ARGS,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={esc(share)},mount_tag=testbed,security_model=none",
    ]  # fmt: skip


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived during run()."""


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    # By default SIGTERM/SIGHUP end Python without running `finally`; make
    # them an exception for the duration of run() so qemu is killed and the
    # temp dir removed. Only the main thread can set handlers, and only
    # handlers nobody else installed are replaced.
    def handler(signum, _frame):
        raise Terminated(f"signal {signum}")

    replaced = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                replaced[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in replaced.items():
            signal.signal(sig, old)


def _die_with_parent() -> None:
    # Runs in the child before exec: if we die without cleaning up (SIGKILL),
    # the kernel kills qemu too (PR_SET_PDEATHSIG).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def _stream(share: Path, tails: dict[str, int]) -> None:
    for name, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        try:
            with open(share / name, "rb") as f:
                f.seek(tails[name])
                data = f.read()
        except FileNotFoundError:
            continue
        if data:
            tails[name] += len(data)
            out.buffer.write(data)
            out.flush()


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------
# CLI


def _status(name: str) -> tuple[bool, str]:
    """Whether a flavour is cached and bootable here, and what it is."""
    k = cached(name)
    if k is None:
        return False, "not cached (run --prepare)"
    detail = f"{k.release}, {k.kernel.name}, headers {k.build}"
    missing = [p for p in (QBOOT, shutil.which(QEMU) or QEMU) if not os.path.exists(p)]
    if missing:
        return False, f"{detail}; missing {', '.join(missing)}"
    return True, detail


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m testbed.guest",
        description="Run a command in a Debian kernel under qemu, or prepare the kernels.",
    )
    ap.add_argument("--flavour", default="6.1", choices=FLAVOURS)
    ap.add_argument("--timeout", type=float, default=900, help="seconds, boot included (default 900)")
    ap.add_argument("--memory", type=int, default=2048, help="guest memory in MiB (default 2048)")
    ap.add_argument("--cwd", help="directory to run in (default: the current one)")
    ap.add_argument("--prepare", nargs="*", metavar="FLAVOUR", help="only fetch and cache these flavours (default all)")
    ap.add_argument("--list", action="store_true", help="show which flavours are cached and usable")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    if args.list:
        for name in FLAVOURS:
            ok, detail = _status(name)
            print(f"{name:5} {'OK  ' if ok else 'NO  '} {detail}")
        return 0
    if args.prepare is not None:
        failed = 0
        for name in args.prepare or list(FLAVOURS):
            t0 = time.monotonic()
            try:
                k = prepare(name)
            except (PrepareError, ValueError, OSError) as e:
                failed += 1
                print(f"{name:5} FAIL {e}", flush=True)
            else:
                print(f"{name:5} OK   {k.release} ({k.kernel.name}, {time.monotonic() - t0:.1f} s)", flush=True)
        return 1 if failed else 0
    if not command:
        ap.error("nothing to run: give -- CMD ARGS..., --prepare or --list")
    try:
        result = run(command, args.flavour, args.timeout, args.cwd, None, args.memory, stream=True)
    except PrepareError as e:
        print(f"[testbed.guest] cannot prepare flavour {args.flavour}: {e}", file=sys.stderr)
        return RC_GUEST_FAILED
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    if result.failure:
        # Streaming showed the command's output; the diagnosis is ours.
        print(result.failure, file=sys.stderr, end="")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
