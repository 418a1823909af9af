"""Tests that run skbtracer against real traffic on whatever kernel they
run on: the host (no kprobes: the tracepoint backend) and the qemu guests
(Debian kernels with kprobes: the kprobe backend)."""

import contextlib
import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from skbtracer_lib.program import (
    kernel,
    probes,  # noqa: E402
)

BACKEND = "kprobe" if kernel.kprobes_available() else "tracepoint"
# skb:kfree_skb carries a reason since 5.17; before that drop rows have none
HAVE_DROP_REASONS = probes.drop_reason_arg() is not None
# Route-row function names per backend for "the packet arrived on this device"
ARRIVAL = {"kprobe": {"netif_rx", "__netif_receive_skb", "ip_rcv"},
           "tracepoint": {"netif_rx", "netif_receive_skb"}}[BACKEND]


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        for item in items:
            item.add_marker(pytest.mark.skip(reason="needs root"))


@pytest.fixture(scope="session")
def backend():
    return BACKEND


@pytest.fixture(scope="session")
def settle():
    """Seconds of quiet before counting what arrived; TCG guests are slow."""
    return 1.0 if BACKEND == "kprobe" else 0.3


@contextlib.contextmanager
def mounted_tmpfs(size):
    """A small tmpfs of our own (size: "64k"), for full-disk tests; skips
    the test where tmpfs cannot be mounted, unmounted afterwards."""
    where = tempfile.mkdtemp(prefix="skbt-full-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size,
                              "skbt-full", where], capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(where)
        pytest.skip("cannot mount a tmpfs: %s" % mounted.stderr.strip())
    try:
        yield where
    finally:
        subprocess.run(["umount", where], check=True)
        os.rmdir(where)
