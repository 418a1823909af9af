"""scripts/deps.sh's uses (issue 22): tracing installs what debian/control's
package depends on and no test tool; the demo adds the test bed's node only;
the tests (deps.sh alone) get everything; a use it does not know is one line
and exit 2."""

import re
import subprocess

import pytest

from skbt_unit_helpers import REPO

DEPS = REPO / "scripts" / "deps.sh"


def package_lists():
    """{use: set of packages}, as the script's assignments make them."""
    text = DEPS.read_text()
    block = text[text.index("TRACE="):text.index("use=")]
    values = {}
    for use in ("TRACE", "DEMO", "PACKAGE", "TEST"):
        one = subprocess.run(["sh", "-c", block + 'echo $%s' % use], capture_output=True,
                             text=True, check=True).stdout
        values[use.lower()] = set(one.split())
    return values


def control_depends():
    """The packages debian/control's binary package depends on by name."""
    control = (REPO / "debian" / "control").read_text()
    depends = control.split("\nDepends:", 1)[1].split("\nDescription:", 1)[0]
    relations = [r.strip() for r in depends.split(",")]
    return {re.match(r"[a-z0-9.+-]+", r).group() for r in relations if r and not r.startswith("$")}


def test_each_use_holds_the_smaller_ones():
    lists = package_lists()
    assert lists["trace"] <= lists["demo"] <= lists["test"]
    assert lists["package"] <= lists["test"]


def test_tracing_installs_what_the_package_depends_on_and_no_test_tool():
    lists = package_lists()
    assert control_depends() <= lists["trace"]
    assert not {"qemu-system-x86", "tshark", "lintian", "debhelper", "python3-pytest",
                "busybox-static"} & lists["demo"]


def test_demo_and_tests_ask_for_their_use():
    assert "./scripts/deps.sh demo\n" in (REPO / "scripts" / "demo.sh").read_text()
    assert "./scripts/deps.sh\n" in (REPO / "scripts" / "test.sh").read_text()


@pytest.mark.parametrize("argv", [["bogus"], ["trace", "demo"]])
def test_an_unknown_use_is_one_line_and_exit_2(argv):
    result = subprocess.run(["sh", str(DEPS), *argv], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "trace, demo, package or test" in result.stderr
