"""Fixtures for the unit tests (kept here, not in tests/conftest.py, which
other parts of the test suite own)."""

import os
import subprocess
import uuid

import pytest

import skbt_unit_helpers  # noqa: F401  (puts the repository on sys.path)


@pytest.fixture(scope="module")
def temp_netns():
    """A network namespace made with `ip netns add`: (name, inode).
    Deleted afterwards even when a test fails."""
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    name = "skbt-unit-%s" % uuid.uuid4().hex[:8]
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip("ip netns add failed: %s" % made.stderr.strip())
    try:
        yield name, os.stat(os.path.join("/run/netns", name)).st_ino
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
