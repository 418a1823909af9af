"""The pip path without python3-dpkt and python3-tqdm: only -w needs dpkt
(one line naming the package, exit 1), tqdm's progress bar is left out, and
nothing else notices. The modules are hidden by packages of the same names,
first on PYTHONPATH, whose import raises ImportError (as a missing one does)."""

import os
import subprocess

import pytest

from skbt_unit_helpers import REPO, SKBTRACER, SYSTEM_PYTHON

SAVED = str(REPO / "tests" / "unit" / "golden" / "corpus" / "drops-kprobe.jsonl")


@pytest.fixture(scope="module")
def without_dpkt_tqdm(tmp_path_factory):
    """An environment in which `import dpkt` and `import tqdm` fail."""
    hiding = tmp_path_factory.mktemp("hidden-modules")
    for module in ("dpkt", "tqdm"):
        (hiding / module).mkdir()
        (hiding / module / "__init__.py").write_text(
            "raise ImportError('No module named %s (hidden by a test)')\n" % module)
    return dict(os.environ, PYTHONPATH=str(hiding))


def run(env, *args, code=None):
    command = [SYSTEM_PYTHON, SKBTRACER, *args] if code is None else [SYSTEM_PYTHON, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=str(REPO),
                          env=env)


def test_the_modules_are_hidden(without_dpkt_tqdm):
    hidden = run(without_dpkt_tqdm, code="import dpkt")
    assert hidden.returncode == 1 and "hidden by a test" in hidden.stderr


def test_help(without_dpkt_tqdm):
    result = run(without_dpkt_tqdm, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout and result.stderr == ""


def test_saved_events_are_read(without_dpkt_tqdm):
    result = run(without_dpkt_tqdm, "-r", SAVED)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "NETFILTER_DROP" in result.stdout and "DROPPED" in result.stderr


def test_write_says_what_is_missing(without_dpkt_tqdm, tmp_path):
    pcapng = tmp_path / "t.pcapng"
    result = run(without_dpkt_tqdm, "-H", "10.0.0.1", "-w", str(pcapng))
    assert result.returncode == 1
    assert result.stderr == "skbtracer: -w needs python3-dpkt (apt install python3-dpkt)\n"
    assert result.stdout == "" and not pcapng.exists()


def test_a_bad_command_line_is_said_first(without_dpkt_tqdm, tmp_path):
    result = run(without_dpkt_tqdm, "-r", SAVED, "-w", str(tmp_path / "t.pcapng"))
    assert result.returncode == 2 and "-w/--write applies only while tracing" in result.stderr


def test_no_progress_bar_without_tqdm(without_dpkt_tqdm):
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from skbtracer_lib.program import attach\n"
            "print(attach._progress('attaching', attach.PROGRESS_MIN * 10))" % str(REPO))
    result = run(without_dpkt_tqdm, code=code)
    assert (result.returncode, result.stdout, result.stderr) == (0, "None\n", "")
