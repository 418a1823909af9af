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

from skbtracer_lib.program import kernel, kprobe_multi, probes, tp_btf  # noqa: E402
from testbed.qemu.flavours import FLAVOURS, Expected  # noqa: E402


def host_expected():
    """The host's facts from the kernel itself (its kprobe PMU, its
    release, its BTF), not from the library under test."""
    kprobes = os.path.isdir("/sys/bus/event_source/devices/kprobe")
    release = os.uname().release
    version = tuple(int(n) for n in release.split("-")[0].split(".")[:2])
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    return Expected(backend="kprobe" if kprobes else "tracepoint",
                    drop_reasons=version >= (5, 17),
                    nft_verdicts=kprobes and version >= (5, 11),
                    kprobe_multi=False,
                    tracepoints="tp_btf" if btf and version >= (5, 5) else "raw_tracepoint")


# In a guest (TESTBED_GUEST = its flavour) the kernel is known: what the
# tests expect comes from the flavour, never from the code under test.
GUEST = os.environ.get("TESTBED_GUEST")
EXPECTED = FLAVOURS[GUEST].expected if GUEST else host_expected()
BACKEND = EXPECTED.backend
TRACEPOINTS = EXPECTED.tracepoints      # how skbtracer attaches tracepoints: -v's word
HAVE_DROP_REASONS = EXPECTED.drop_reasons
# --nftrace is user space and netlink, the same with every probe backend: the guests skip it
NFTRACE_HOST_ONLY = ("host only: --nftrace reads the kernel's nftables trace over netlink in user "
                     "space, the same with every probe backend, and a tracer start costs a compile "
                     "in the guest")
# Route-row function names per backend for "the packet arrived on this device"
ARRIVAL = {"kprobe": {"netif_rx", "__netif_receive_skb", "ip_rcv"},
           "tracepoint": {"netif_rx", "netif_receive_skb"}}[BACKEND]


def nft_verdicts_possible():
    """What the library finds: nft_do_chain's structs live in the nf_tables
    module, and kernels before 5.11 have no module BTF."""
    btf = kernel.btf()
    return btf is not None and (btf.module("nf_tables") is not None
                                or btf.vmlinux.find("nft_chain", (4,)) is not None)


def library_view():
    """The facts as the library sees them, beside EXPECTED's."""
    subprocess.run(["modprobe", "nf_tables"], capture_output=True)   # its BTF with it
    return Expected(backend="kprobe" if kernel.kprobes_available() else "tracepoint",
                    drop_reasons=probes.drop_reason_arg() is not None,
                    nft_verdicts=nft_verdicts_possible(),
                    kprobe_multi=kprobe_multi.supported(),
                    tracepoints=tp_btf.TP_BTF if tp_btf.check()[0] else tp_btf.RAW)


@pytest.fixture(scope="session", autouse=True)
def kernel_is_as_expected():
    """In a guest: the library sees the kernel the flavour is, or every test
    of the stage errors at once (each would assert a premise that is false)."""
    if GUEST and os.geteuid() == 0:
        seen = library_view()
        assert seen == EXPECTED, "flavour %s expects %s; the library sees %s" % (
            GUEST, EXPECTED, seen)


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


# ------------------------------------------------------------ what the time went on

_module_seconds = {}


def pytest_runtest_logreport(report):
    module = report.nodeid.split("::")[0]
    _module_seconds[module] = _module_seconds.get(module, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Per test module: wall time, tracer starts and their seconds to the
    header (the bcc compile, in a guest most of it); the rest is traffic,
    namespaces and the tracer's own exit."""
    from testbed.tracer import STARTS
    starts = {}
    for test, startup, running in STARTS:
        module = test.split("::")[0]
        n, up, run = starts.get(module, (0, 0.0, 0.0))
        starts[module] = (n + 1, up + startup, run + running)
    write = terminalreporter.write_line
    write("time per module: wall s, tracer starts, start-up s (compile), running s")
    for module, seconds in sorted(_module_seconds.items(), key=lambda kv: -kv[1]):
        n, up, run = starts.get(module, (0, 0.0, 0.0))
        write("  %-44s %7.1f %3d %7.1f %7.1f" % (module, seconds, n, up, run))
