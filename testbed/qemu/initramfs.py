"""The initramfs: static busybox, stage 1 (init.sh) and the modules that
reach the root (virtio, 9p, overlay), as the cpio archive the kernel
unpacks. Rebuilt when what goes into it changes."""

from __future__ import annotations

import gzip
import hashlib
import lzma
import struct
from pathlib import Path

from .flavours import CACHE_FORMAT, SCRIPTS, Kernel, PrepareError
from .tools import run_tool, run_tool_bytes, tool_path, write_atomic

# Modules the initramfs needs to reach the root; modprobe adds dependencies.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")


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


def ensure_initramfs(kernel: Kernel) -> None:
    """(Re)build the initramfs when missing or when what goes into it changed (init.sh, say)."""
    stamp = kernel.initramfs.with_name("initramfs.key")
    key = hashlib.sha256(
        repr((CACHE_FORMAT, BOOT_MODULES, str(static_busybox()))).encode() + (SCRIPTS / "init.sh").read_bytes()
    ).hexdigest()
    if kernel.initramfs.exists() and stamp.exists() and stamp.read_text() == key:
        return
    root = kernel.modules.parent.parent.parent
    write_atomic(kernel.initramfs, _initramfs(root, kernel.release))
    write_atomic(stamp, key.encode())


def _initramfs(root: Path, release: str) -> bytes:
    """A cpio (newc) archive: static busybox, /init and the boot modules."""
    p = run_tool([tool_path("modprobe"), "-d", str(root), "-S", release, "--show-depends", "-a", *BOOT_MODULES])
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
        return run_tool_bytes(["zstd", "-dc", str(ko)])
    if ko.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


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
