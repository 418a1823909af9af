"""One version, written in skbtracer_lib/__init__.py, everywhere it shows:
--version, setup.cfg, debian/changelog, the man page and the JSON stream.
The bash completion is generated from the flags and completes them."""

import argparse
import configparser
import os
import re
import subprocess
import sys

import pytest
from skbt_unit_helpers import REPO

from skbtracer_lib import __version__, config
from skbtracer_lib.config import completion
from skbtracer_lib.outputs import jsonl


def test_version_flag():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "skbtracer.py"), "--version"],
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "skbtracer %s\n" % __version__, "")


def test_setup_cfg_reads_the_version():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    assert cfg["metadata"]["version"] == "attr: skbtracer_lib.__version__"


def test_debian_changelog_agrees():
    with open(os.path.join(REPO, "debian", "changelog")) as f:
        top = f.readline()
    version = re.match(r"skbtracer \(([^)]+)\) ", top).group(1)
    upstream = version.rsplit("-", 1)[0]    # a Debian revision (-1) may follow
    assert upstream == __version__


def test_man_page_header_agrees():
    with open(os.path.join(REPO, "man", "skbtracer.8")) as f:
        th = f.readline()
    assert th.startswith(".TH skbtracer 8 ")
    assert '"skbtracer %s"' % __version__ in th


def test_json_start_object():
    start = jsonl.start_object("tracepoint")
    assert start["type"] == "start" and start["version"] == __version__
    assert start["kernel"] == os.uname().release and start["backend"] == "tracepoint"


# ---------------------------------------------------------------- bash completion

def complete(*words, cwd=None):
    """What the generated completion offers for the last word of `words`, the
    way bash calls it (COMP_WORDS split at '=' as COMP_WORDBREAKS does)."""
    script = completion.bash()
    quoted = " ".join("'%s'" % w for w in words)
    shell = ('%s\nCOMP_WORDS=(%s); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
             'cur=${COMP_WORDS[COMP_CWORD]}; [[ $cur == = ]] && cur=\n'
             '_skbtracer skbtracer "$cur" "${COMP_WORDS[COMP_CWORD-1]}"\n'
             'printf "%%s\\n" "${COMPREPLY[@]}"' % (script, quoted))
    proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_completion_offers_every_visible_flag():
    offered = set(complete("skbtracer", ""))
    for action in config.build_parser()._actions:
        for flag in action.option_strings:
            if action.help == argparse.SUPPRESS:
                assert flag not in offered
            else:
                assert flag in offered
    assert complete("skbtracer", "--pro") == ["--proto"]


@pytest.mark.parametrize("words, expected", [
    (("--proto", "u"), ["udp"]),
    (("--proto", "=", "ic"), ["icmp"]),                # --proto=ic
    (("--backend", ""), list(config.BACKENDS)),
    (("-H", ""), []),                                  # an address: nothing to guess
    (("-c", ""), []),
])
def test_completion_of_values(words, expected):
    assert complete("skbtracer", *words) == expected


def test_completion_of_files(tmp_path):
    (tmp_path / "trace.jsonl").write_text("")
    assert complete("skbtracer", "-o", "tr", cwd=tmp_path) == ["trace.jsonl"]
    assert complete("skbtracer", "--json", "=", "tr", cwd=tmp_path) == ["trace.jsonl"]
    # --json alone takes no file: the next word is a flag
    assert "--names" in complete("skbtracer", "--json", "--na", cwd=tmp_path)


# ---------------------------------------------------------------- the package's Depends

# The Debian package of each module the tracer imports from outside the
# standard library (the test bed's pyroute2 is not the tracer's).
DEBIAN_PACKAGES = {"bcc": "python3-bpfcc", "tabulate": "python3-tabulate", "dpkt": "python3-dpkt",
                   "tqdm": "python3-tqdm", "nftables": "python3-nftables"}


def imported_modules(paths):
    import ast
    names = set()
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def control_depends():
    with open(os.path.join(REPO, "debian", "control")) as f:
        binary = f.read().split("\nPackage: skbtracer\n", 1)[1]
    field = re.search(r"^Depends:(.*?)(?=^\S)", binary, re.S | re.M).group(1)
    lines = [line for line in field.splitlines() if not line.lstrip().startswith("#")]
    return {d.split()[0] for d in ",".join(lines).split(",") if d.strip()}


def test_every_import_of_the_tracer_is_in_depends():
    lib = os.path.join(REPO, "skbtracer_lib")
    paths = [os.path.join(REPO, "skbtracer.py")] + sorted(
        os.path.join(folder, name) for folder, _dirs, names in os.walk(lib)
        for name in names if name.endswith(".py"))
    outside = imported_modules(paths) - set(sys.stdlib_module_names) - {"skbtracer_lib"}
    assert outside <= set(DEBIAN_PACKAGES), "add to DEBIAN_PACKAGES and debian/control: %s" % (
        outside - set(DEBIAN_PACKAGES))
    assert {DEBIAN_PACKAGES[m] for m in outside} <= control_depends()
    assert "libpcap0.8" in control_depends()     # loaded through ctypes (pcap filters)
