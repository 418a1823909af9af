"""Debian's kernel packages through a private apt configuration (its own
sources, state and cache under the test bed's cache; the system's apt is
untouched)."""

from __future__ import annotations

import re
from pathlib import Path

from .flavours import CACHE, Flavour, PrepareError
from .kernelfiles import common_name, version_key
from .tools import child, partial, remove

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


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
    p = child(["apt-get", *_apt_options(suite), "update"], text=True)
    if p.returncode != 0:
        raise PrepareError(f"apt-get update for {suite} failed: {p.stderr.strip()[-2000:]}")
    _apt_updated.add(suite)


def latest_release(fl: Flavour) -> str:
    """Newest release of the flavour for which image and both header packages exist."""
    _apt_update(fl.suite)
    names = set(child(["apt-cache", *_apt_options(fl.suite), "pkgnames", "linux-"], text=True).stdout.split())
    releases = [
        n.removeprefix("linux-image-")
        for n in names
        if n.startswith("linux-image-") and re.fullmatch(fl.release_re, n.removeprefix("linux-image-"))
    ]
    usable = [
        r for r in releases if f"linux-headers-{r}" in names and f"linux-headers-{common_name(r)}" in names
    ]
    if not usable:
        raise PrepareError(f"no linux-image/linux-headers pair matching {fl.release_re} in {fl.suite}")
    return max(usable, key=version_key)


def download(fl: Flavour, pkgs: list[str], dest: Path, use_system_apt: bool) -> list[Path]:
    """Download the packages into dest (reused if an earlier run got them all)."""

    def debs(d: Path) -> list[Path] | None:
        found = [min(d.glob(f"{p}_*.deb"), default=None) for p in pkgs]
        return None if None in found else found  # type: ignore[return-value]

    if dest.is_dir() and (got := debs(dest)):
        return got
    # Download next to dest and rename only a complete set: an interrupted
    # download leaves a .partial-* dir that the next build discards.
    tmp = partial(dest)
    tmp.mkdir(parents=True)
    errors = []
    if use_system_apt:
        p = child(["apt-get", "download", *pkgs], cwd=tmp, text=True)
        if p.returncode != 0:
            errors.append(f"system apt: {p.stderr.strip()[-1000:]}")
    if not use_system_apt or errors:
        _apt_update(fl.suite)
        p = child(["apt-get", *_apt_options(fl.suite), "download", *pkgs], cwd=tmp, text=True)
        if p.returncode != 0:
            errors.append(f"apt ({fl.suite}): {p.stderr.strip()[-1000:]}")
            raise PrepareError(f"cannot download {' '.join(pkgs)}: " + " | ".join(errors))
    got = debs(tmp)
    if got is None:
        raise PrepareError(f"apt-get download did not produce all of {' '.join(pkgs)}")
    remove(dest)
    tmp.rename(dest)
    return [dest / p.name for p in got]
