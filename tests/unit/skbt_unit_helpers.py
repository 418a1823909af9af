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
