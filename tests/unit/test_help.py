"""--help as the user invoked the program: the usage line and the examples
name skbtracer (installed) or skbtracer.py (a checkout); no abbreviated
flags (a script's --prot must not work by luck)."""

import re
import signal
import subprocess

import pytest

from skbt_unit_helpers import REPO, SKBTRACER, SYSTEM_PYTHON, assert_usage_error, run_cli
from skbtracer_lib.config import flags


def help_text(command):
    proc = subprocess.run([SYSTEM_PYTHON, command, "-h"], capture_output=True, text=True,
                          timeout=60, cwd="/")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout


def example_lines(text):
    return text.split("\nexamples:\n", 1)[1].splitlines()


def test_checkout_help_names_skbtracer_py():
    text = help_text(SKBTRACER)
    assert text.startswith("usage: skbtracer.py ")
    commands = [line for line in example_lines(text) if not line.lstrip().startswith("#")]
    assert commands and all(line.startswith("    skbtracer.py") for line in commands)


def test_installed_name_in_help(tmp_path):
    """Invoked as skbtracer (as the package's /usr/sbin/skbtracer is)."""
    installed = tmp_path / "skbtracer"
    installed.symlink_to(SKBTRACER)
    text = help_text(str(installed))
    assert text.startswith("usage: skbtracer ") and "skbtracer.py" not in text
    assert "    skbtracer -H 10.244.0.3 --json > trace.jsonl" in text


@pytest.mark.parametrize("prog", ["skbtracer", "skbtracer.py"])
def test_example_comments_line_up(prog):
    for line in example_lines("\n" + flags.examples(prog)):
        if "# " in line:
            assert line.index("# ") == flags.EXAMPLE_COMMENT_AT, line
        else:
            assert line.startswith("    " + prog), line


def test_the_name_when_not_invoked_as_skbtracer():
    assert flags.build_parser().prog == "skbtracer"       # (pytest is argv[0] here)


@pytest.mark.parametrize("argv, mention", [
    (["--prot", "udp"], "--prot"),
    (["--pro=udp"], "--pro"),
    (["--ipadd", "10.0.0.1"], "--ipadd"),
], ids=["prot", "pro=", "ipadd"])
def test_abbreviations_are_refused(argv, mention):
    assert_usage_error(run_cli(*argv), mention)



def test_man_page_exit_status_is_the_codes():
    """EXIT STATUS lists the statuses the code has: 0, 1, 2 (argparse's and
    config's usage errors) and 128 + SIGINT/SIGTERM (skbtracer.py's
    Interrupted, checked on the host by tests/kernel/test_signals.py)."""
    text = (REPO / "man" / "skbtracer.8").read_text()
    section = text.split("\n.SH EXIT STATUS\n", 1)[1].split("\n.SH ", 1)[0]
    statuses = re.findall(r"^\.B ([0-9, ]+)$", section, re.M)
    assert statuses == ["0", "1", "2", "%d, %d" % (128 + signal.SIGINT, 128 + signal.SIGTERM)]
