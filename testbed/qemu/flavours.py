"""The kernels the guests boot ("flavours": Debian's 6.1, 5.10 and 6.12),
where their cache lives, and what each kernel is known to do: the facts the
guest stages expect skbtracer to report (tests/kernel/conftest.py), so a
test cannot switch itself off by asking the code under test."""

from __future__ import annotations

import dataclasses
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
CACHE = REPO / ".cache" / "guest"
SCRIPTS = Path(__file__).resolve().parent   # init.sh (stage 1) and stage2.sh
# Bump when the cache layout or the initramfs changes, to rebuild old caches.
CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Expected:
    """What skbtracer must find on a flavour's kernel (Debian's config of it,
    measured: /work/shared/testbed.md)."""

    backend: str = "kprobe"  # CONFIG_KPROBES=y in all of Debian's kernels
    drop_reasons: bool = True  # skb:kfree_skb has a reason since 5.17
    nft_verdicts: bool = True  # nft_do_chain probed: needs the nf_tables module's BTF (5.11+)
    kprobe_multi: bool = False  # kprobe-multi links: CONFIG_FPROBE (5.18+; Debian from 6.12)
    # BTF-typed raw tracepoints (tp_btf, 5.5+ with vmlinux BTF, as in all of Debian's
    # kernels), else "raw_tracepoint"; not yet seen in a guest (round 3, issue 30)
    tracepoints: str = "tp_btf"


@dataclasses.dataclass(frozen=True)
class Flavour:
    name: str
    suite: str  # Debian suite that carries this kernel
    release_re: str  # a kernel release (uname -r) of this flavour
    # Go with the header packages installed in /usr/src (the host's own
    # Debian release) rather than download them; the image must match them.
    installed_headers: bool = False
    expected: Expected = Expected()


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


class PrepareError(RuntimeError):
    pass


FLAVOURS = {
    "6.1": Flavour("6.1", "bookworm", r"6\.1\.0-\d+-amd64", installed_headers=True),
    "5.10": Flavour("5.10", "bullseye", r"5\.10\.0-\d+-amd64",
                    expected=Expected(drop_reasons=False, nft_verdicts=False)),
    "6.12": Flavour("6.12", "trixie", r"6\.12\.\d+\+deb13(?:\.\d+)?-amd64",
                    expected=Expected(kprobe_multi=True)),
}


def flavour_named(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(f"unknown flavour {name!r}; known: {', '.join(FLAVOURS)}") from None
