"""Fetch and cache a flavour's kernel: the image (and, where the host has
none, the header packages) from Debian, extracted and depmod'ed once into
<repo>/.cache/guest/<flavour>/, complete when meta.json is there."""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Iterator

from .apt import download, latest_release
from .flavours import CACHE, CACHE_FORMAT, Flavour, Kernel, flavour_named
from .initramfs import ensure_initramfs
from .kernelfiles import (cached_header_trees, common_name, ensure_header_links, extract_kernel,
                          fix_header_trees, normalise_modules_dir, system_header_trees,
                          system_release)
from .tools import remove, run_tool, tool_path, partial, write_atomic


def prepare(flavour: str = "6.1") -> Kernel:
    """Return the cached kernel of a flavour, fetching and building it if needed."""
    fl = flavour_named(flavour)
    d = CACHE / fl.name
    d.mkdir(parents=True, exist_ok=True)
    with _locked(CACHE / f"{fl.name}.lock"):
        kernel = _load(fl)
        if kernel is None:
            kernel = _build(fl)
        ensure_header_links(kernel)
        ensure_initramfs(kernel)
        return kernel


def cached(flavour: str) -> Kernel | None:
    """The cached kernel of a flavour, or None; never downloads."""
    fl = flavour_named(flavour)
    with _locked(CACHE / f"{fl.name}.lock"):
        return _load(fl)


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
    if meta["headers"] == "system" and system_release(fl) != meta["release"]:
        return None
    k = _kernel(fl, meta["release"], meta["kernel"], meta["headers"])
    needed = (k.kernel, k.modules / "modules.dep", k.build, k.source)  # initramfs: ensure_initramfs
    return k if all(p.exists() for p in needed) else None


def _kernel(fl: Flavour, release: str, kernel_name: str, headers: str) -> Kernel:
    d = CACHE / fl.name
    if headers == "system":
        build, source = system_header_trees(release)
    else:
        build, source = cached_header_trees(d / "root", release)
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
        remove(p)

    release = system_release(fl)
    if release is not None:
        headers = "system"
        pkgs = [f"linux-image-{release}"]
    else:
        headers = "cache"
        release = latest_release(fl)
        common = common_name(release)
        pkgs = [f"linux-image-{release}", f"linux-headers-{release}", f"linux-headers-{common}"]

    debs = download(fl, pkgs, d / "debs", use_system_apt=headers == "system")

    root_tmp = partial(d / "root")
    for deb in debs:
        run_tool(["dpkg-deb", "-x", str(deb), str(root_tmp)])
    normalise_modules_dir(root_tmp, release)
    run_tool([tool_path("depmod"), "-b", str(root_tmp), release])
    if headers == "cache":
        fix_header_trees(root_tmp, d / "root", release)
    root_tmp.rename(d / "root")
    root = d / "root"

    kernel_name = extract_kernel(root / "boot" / f"vmlinuz-{release}", d)
    kernel = _kernel(fl, release, kernel_name, headers)
    ensure_initramfs(kernel)
    ensure_header_links(kernel)
    meta = {"format": CACHE_FORMAT, "release": release, "kernel": kernel_name, "headers": headers}
    write_atomic(d / "meta.json", json.dumps(meta, indent=1).encode())
    # The extracted tree is all we need; the packages would double the cache.
    remove(d / "debs")
    return kernel
