"""Hostile paths for -o/--output and --json=FILE: symlinks are never
followed (not even with --force), regular files are overwritten only with
--force, FIFOs and character devices are written to as they are.

Both checks are tested: config.check_new_file (the flags, exit 2) and
outputs.files.open_new_file (the open itself, which must hold even when the
path changed after the flags were checked)."""

import os
import socket
import threading

import pytest
from skbt_unit_helpers import run_cli

from skbtracer_lib import config
from skbtracer_lib.outputs import files
from skbtracer_lib.program import kernel


def check(path, force=False):
    config.check_new_file("-o/--output", str(path), force)


def open_new(path, force=False, binary=False):
    return files.open_new_file("-o/--output", str(path), force, binary=binary)


@pytest.fixture
def victim(tmp_path):
    """A file an attacker would like root to overwrite."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    return target


@pytest.mark.parametrize("force", [False, True])
def test_symlink_refused_even_with_force(tmp_path, victim, force):
    link = tmp_path / "rows.txt"
    link.symlink_to(victim)
    with pytest.raises(config.UsageError, match="symbolic link"):
        check(link, force)
    with pytest.raises(kernel.KernelError, match="symbolic link"):
        open_new(link, force)
    assert victim.read_text() == "precious\n"


def test_dangling_symlink_is_not_created_through(tmp_path):
    """The /tmp attack: a link to where root would create a file."""
    link = tmp_path / "rows.txt"
    link.symlink_to(tmp_path / "created-by-root")
    with pytest.raises(config.UsageError, match="symbolic link"):
        check(link)
    with pytest.raises(kernel.KernelError, match="symbolic link"):
        open_new(link)
    assert not (tmp_path / "created-by-root").exists()


def test_regular_file_needs_force(tmp_path, victim):
    with pytest.raises(config.UsageError, match="exists; add --force"):
        check(victim)
    with pytest.raises(kernel.KernelError, match="exists; add --force"):
        open_new(victim)
    assert victim.read_text() == "precious\n"
    check(victim, force=True)
    with open_new(victim, force=True) as f:
        f.write("new\n")
    assert victim.read_text() == "new\n"


def test_new_file_is_created_text_or_binary(tmp_path):
    check(tmp_path / "a")
    with open_new(tmp_path / "a") as f:
        f.write("row\n")
    with open_new(tmp_path / "b", binary=True) as f:
        f.write(b"\x0a\x0d\x0d\x0a")
    assert (tmp_path / "a").read_text() == "row\n"
    assert (tmp_path / "b").read_bytes() == b"\x0a\x0d\x0d\x0a"


def test_hard_linked_file_refused_with_force(tmp_path, victim):
    other = tmp_path / "rows.txt"
    os.link(victim, other)
    with pytest.raises(config.UsageError, match="hard links"):
        check(other, force=True)
    with pytest.raises(kernel.KernelError, match="hard links"):
        open_new(other, force=True)
    assert victim.read_text() == "precious\n"


def test_character_device_needs_no_force():
    check("/dev/null")
    with open_new("/dev/null") as f:
        f.write("rows nobody keeps\n")


def test_fifo_needs_no_force(tmp_path):
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    check(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    with open_new(fifo) as f:
        f.write("row\n")
    reader.join(10)
    assert got == ["row\n"]


def test_directory_and_socket_refused(tmp_path):
    with pytest.raises(config.UsageError, match="is a directory"):
        check(tmp_path, force=True)
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        with pytest.raises(config.UsageError, match="not a regular file, FIFO"):
            check(path, force=True)
        with pytest.raises(kernel.KernelError):
            open_new(path, force=True)
    finally:
        server.close()


def test_cli_refuses_symlink_in_one_line(tmp_path, victim):
    link = tmp_path / "trace.jsonl"
    link.symlink_to(victim)
    for flags in (["-o", str(link)], ["--json=%s" % link, "--force"]):
        proc = run_cli(*flags, "--ebpf")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "symbolic link" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


def test_cli_accepts_dev_null():
    """-o /dev/null (keep only the story) used to be refused as existing."""
    proc = run_cli("-o", "/dev/null", "--ebpf")
    assert proc.returncode == 0, proc.stderr
