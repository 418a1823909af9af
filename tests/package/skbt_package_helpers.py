"""What the package tests share: commands that must succeed, the
environment an admin's shell has, and the checks run against each way of
installing skbtracer (kept here, not in a conftest, which tests/kernel has)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from skbtracer_lib import __version__  # noqa: E402
from testbed.topology import SeedCluster  # noqa: E402
from testbed.tracer import TracerRun  # noqa: E402


def run(argv, **kwargs):
    """A command that must succeed; its output (text) in the failure message."""
    proc = subprocess.run(argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          **kwargs)
    assert proc.returncode == 0, "%s: exit %d\n%s" % (" ".join(argv), proc.returncode, proc.stdout)
    return proc.stdout


def clean_env():
    """What an admin's shell would have: no PYTHONPATH pointing into the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def check_version(command):
    out = run(command + ["--version"], env=clean_env(), cwd="/")
    assert out == "skbtracer %s\n" % __version__


def library_paths(python):
    """(skbtracer_lib/program/source.py, skbtracer.c) as `python` finds them, outside the checkout."""
    out = run([python, "-c", "import skbtracer_lib.program.source as p; "
               "print(p.__file__); print(p.c_source_path())"], env=clean_env(), cwd="/")
    return tuple(out.split())


def rows_module_path(python):
    """Where `python`, outside the checkout, finds the text rows in C
    (skbtracer_lib/_rows, built by the install), or "None"."""
    out = run([python, "-c", "from skbtracer_lib.events import textrow; r = textrow.rows_in_c(); "
               "print(r.__file__ if r else None)"], env=clean_env(), cwd="/")
    return out.strip()


def check_short_trace(command):
    """One UDP datagram from the client pod to the server pod (two namespaces
    of the test bed), traced by `command`: rows in both namespaces."""
    with SeedCluster(promisc=False) as cluster:
        cluster.start_udp_receiver("server")
        with TracerRun(["-H", cluster.ip["server"], "--proto", "udp", "--no-summary"],
                       command=command) as tracer:
            sport = cluster.send_udp("client", cluster.ip["server"], cluster.SERVER_PORT)
            assert cluster.received("server") == 1
        assert tracer.returncode == 0, tracer.stderr
        assert "Traceback" not in tracer.stderr
        # other test beds on the same host may use the same addresses: only
        # rows in this cluster's namespaces count
        ours = set(cluster.ns_inode.values())
        rows = [row for row in tracer.rows if row.netns in ours]
        seen = {row.netns for row in rows}
        assert {cluster.ns_inode["client"], cluster.ns_inode["server"]} <= seen, (
            tracer.stdout, tracer.stderr)
        flow = "U:%s:%d->%s:%d" % (cluster.ip["client"], sport, cluster.ip["server"],
                                   cluster.SERVER_PORT)
        assert all(row.pkt == flow for row in rows), tracer.stdout
