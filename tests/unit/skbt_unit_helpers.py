"""Helpers for the unit tests (a uniquely named module, so test files can
import it whatever other conftest.py files exist)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # skbtracer_lib, wherever pytest is started

# bcc is only importable by Debian's interpreter, and the CLI must be run the
# way users run it.
SYSTEM_PYTHON = "/usr/bin/python3"
SKBTRACER = str(REPO / "skbtracer.py")


def run_cli(*args, timeout=60):
    """Run skbtracer.py with args; CompletedProcess with text output."""
    return subprocess.run([SYSTEM_PYTHON, SKBTRACER, *args], capture_output=True,
                          text=True, timeout=timeout, cwd="/")


def assert_usage_error(result, mention=None):
    """Exit 2, one line 'skbtracer: error: ...' on stderr, nothing else."""
    assert result.returncode == 2, (result.returncode, result.stderr, result.stdout[:300])
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr.endswith("\n")
    assert lines[0].startswith("skbtracer: error: "), lines[0]
    assert "usage:" not in result.stderr
    if mention:
        assert mention in lines[0], lines[0]
