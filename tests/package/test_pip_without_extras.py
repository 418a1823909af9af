"""Issue 22: the pip path where dpkt and tqdm are absent. A venv without the
system's site packages (where Debian's python3-dpkt and python3-tqdm would
be seen) that sees bcc alone (a .pth naming a directory holding only a link
to bcc), and `pip install --no-deps .`: --help, -r and tracing work, and -w
says in one line that python3-dpkt is missing."""

import os
import subprocess

import pytest

from skbt_package_helpers import REPO, check_short_trace, clean_env, run

SAVED = os.path.join(REPO, "tests", "unit", "golden", "corpus", "drops-kprobe.jsonl")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    top = tmp_path_factory.mktemp("pip-bare")
    checkout, env_dir, bcc_only = str(top / "skbtracer"), str(top / "venv"), top / "bcc-only"
    run([os.path.join(REPO, "scripts", "export-head.sh"), checkout])
    run(["/usr/bin/python3", "-m", "venv", env_dir], env=clean_env())
    bcc = run(["/usr/bin/python3", "-c", "import bcc, os; print(os.path.dirname(bcc.__file__))"],
              env=clean_env()).strip()
    bcc_only.mkdir()
    (bcc_only / "bcc").symlink_to(bcc)
    site = run([env_dir + "/bin/python", "-c", "import sysconfig; "
                "print(sysconfig.get_paths()['purelib'])"], env=clean_env()).strip()
    with open(os.path.join(site, "bcc-only.pth"), "w") as f:
        f.write(str(bcc_only) + "\n")
    # --no-deps: setup.cfg's dpkt and tqdm are not installed
    run([env_dir + "/bin/pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "."], cwd=checkout, env=clean_env())
    return env_dir


def skbtracer(venv, *args, cwd="/"):
    return subprocess.run([venv + "/bin/skbtracer", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=cwd, timeout=120)


def test_the_venv_has_bcc_and_neither_dpkt_nor_tqdm(venv):
    found = run([venv + "/bin/python", "-c", "import importlib.util as u; "
                 "print(*[bool(u.find_spec(m)) for m in ('bcc', 'dpkt', 'tqdm')])"],
                env=clean_env(), cwd="/")
    assert found.split() == ["True", "False", "False"]


def test_help_and_saved_events(venv):
    shown = skbtracer(venv, "--help")
    assert shown.returncode == 0 and "usage: skbtracer" in shown.stdout, shown.stderr
    read = skbtracer(venv, "-r", SAVED)
    assert read.returncode == 0, read.stderr
    assert read.stdout.startswith("time       NETWORK_NS") and "kfree_skb reason=" in read.stdout
    assert "Traceback" not in read.stderr


def test_minus_w_says_dpkt_is_missing(venv, tmp_path):
    result = skbtracer(venv, "-w", str(tmp_path / "x.pcapng"), "-H", "10.0.0.1")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "skbtracer: -w needs python3-dpkt (apt install python3-dpkt)\n"
    assert not os.path.exists(tmp_path / "x.pcapng")


def test_tracing_needs_neither(venv):
    check_short_trace([venv + "/bin/skbtracer"])
