"""Faults outside the user's flags: not root, no bcc, no header tree.
Each is one line on stderr saying what to do, exit 1, no traceback."""

import os
import subprocess

import pytest

from skbtracer_lib.program import kernel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKBTRACER = os.path.join(REPO, "skbtracer.py")


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def assert_one_line_error(proc, text):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("skbtracer: ") and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_not_root():
    proc = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "/usr/bin/python3", SKBTRACER, "--drop"])
    assert_one_line_error(proc, "must be run as root")


@pytest.mark.skipif(os.geteuid() != 0, reason="the bcc check comes after the root check")
def test_bcc_not_importable():
    # -S: no site-packages, so Debian's bcc is not on the path
    proc = run(["/usr/bin/python3", "-S", SKBTRACER, "--drop"])
    assert_one_line_error(proc, "install python3-bpfcc")


def test_no_header_tree(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel, "release", lambda: "0.0.0-no-such-kernel")
    monkeypatch.setattr(kernel.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(kernel.os.path, "exists",
                        lambda p: False if p == "/sys/kernel/kheaders.tar.xz" else os.path.lexists(p))
    with pytest.raises(kernel.KernelError) as info:
        kernel.find_header_tree()
    assert "install linux-headers-" in str(info.value)


def test_split_debian_header_tree_is_merged(tmp_path, monkeypatch):
    """A build tree (-amd64) plus its -common source tree become one tree
    that bcc can use as BCC_KERNEL_SOURCE."""
    build = tmp_path / "linux-headers-9.9.9-1-amd64"
    common = tmp_path / "linux-headers-9.9.9-1-common"
    (build / "include/generated").mkdir(parents=True)
    (build / "include/generated/autoconf.h").write_text("")
    (build / "arch/x86/include/generated").mkdir(parents=True)
    (common / "include/linux").mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("")
    (common / "arch/x86/include/asm").mkdir(parents=True)
    monkeypatch.setattr(kernel, "release", lambda: "0.0.0-no-such-kernel")
    monkeypatch.setattr(kernel.glob, "glob", lambda pattern: [str(build)])
    tree = kernel.find_header_tree()
    try:
        root = tree.kernel_source
        assert os.path.isfile(os.path.join(root, "include/linux/kconfig.h"))
        assert os.path.isfile(os.path.join(root, "include/generated/autoconf.h"))
        assert os.path.isdir(os.path.join(root, "arch/x86/include/asm"))
        assert os.path.isdir(os.path.join(root, "arch/x86/include/generated"))
        assert "another kernel" in tree.description
    finally:
        tree.close()
    assert not os.path.exists(root)


def test_stale_header_farms_of_dead_runs_are_removed(tmp_path):
    """kill -9 leaves a merged header tree behind; the next run removes it."""
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    dead = tmp_path / ("%s%d-abc" % (kernel.FARM_PREFIX, dead_pid.pid))
    alive = tmp_path / ("%s%d-abc" % (kernel.FARM_PREFIX, os.getpid()))
    link = tmp_path / ("%s%d-link" % (kernel.FARM_PREFIX, dead_pid.pid))
    other = tmp_path / "unrelated-1-abc"
    for d in (dead, alive, other):
        (d / "include").mkdir(parents=True)
    link.symlink_to(other)
    kernel.remove_stale_header_farms(str(tmp_path))
    assert not dead.exists()
    assert alive.exists() and other.exists() and (other / "include").exists()
    assert link.is_symlink()
