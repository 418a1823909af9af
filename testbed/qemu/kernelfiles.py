"""The kernel's own files in the cache: the bootable ELF out of the bzImage,
the module tree depmod wants, and the header trees bcc compiles against."""

from __future__ import annotations

import lzma
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

from .flavours import Flavour, Kernel, PrepareError
from .tools import child, remove, write_atomic


def version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def common_name(release: str) -> str:
    return release.removesuffix("-amd64") + "-common"


def system_release(fl: Flavour) -> str | None:
    """Newest release of this flavour whose headers are installed in /usr/src, if it goes with those."""
    if not fl.installed_headers:
        return None
    found = []
    for p in Path("/usr/src").glob("linux-headers-*-amd64"):
        release = p.name.removeprefix("linux-headers-")
        if re.fullmatch(fl.release_re, release) and (p.parent / f"linux-headers-{common_name(release)}").is_dir():
            found.append(release)
    return max(found, key=version_key, default=None)


def system_header_trees(release: str) -> tuple[Path, Path]:
    return Path(f"/usr/src/linux-headers-{release}"), Path(f"/usr/src/linux-headers-{common_name(release)}")


def cached_header_trees(root: Path, release: str) -> tuple[Path, Path]:
    src = root / "usr" / "src"
    return src / f"linux-headers-{release}", src / f"linux-headers-{common_name(release)}"


def normalise_modules_dir(root: Path, release: str) -> None:
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
        remove(lib / name)


def fix_header_trees(root: Path, final_root: Path, release: str) -> None:
    """Make the downloaded header trees self-contained at their final place in the cache.

    The -amd64 tree refers to its -common tree by absolute /usr/src paths
    (the Makefile's include, possibly links); point those into the cache.
    Relative links between the two trees resolve already, as both sit in
    root/usr/src.
    """
    src = root / "usr" / "src"
    final_src = final_root / "usr" / "src"
    for tree in (src / f"linux-headers-{release}", src / f"linux-headers-{common_name(release)}"):
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


def ensure_header_links(kernel: Kernel) -> None:
    """modules/build and modules/source: where bcc looks for this kernel's headers.

    Absolute links, since the guest sees the tree bind-mounted at
    /lib/modules/<release> where a relative link would resolve elsewhere;
    re-made on every prepare in case the repo moved.
    """
    for name, target in (("build", kernel.build), ("source", kernel.source)):
        link = kernel.modules / name
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        remove(link)
        link.symlink_to(target)


def extract_kernel(vmlinuz: Path, dest_dir: Path) -> str:
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
        p = child(["zstd", "-dc"], input=payload[:-4])
        elf = p.stdout if p.returncode == 0 else None
    if elf and elf.startswith(b"\x7fELF") and _has_pvh_note(elf):
        write_atomic(dest_dir / "vmlinux", elf)
        return "vmlinux"
    write_atomic(dest_dir / "bzImage", data)
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
