"""The Debian package: built from an export of HEAD by scripts/build-deb.sh
(`make deb`), checked by lintian, installed with apt-get, used as an admin
would use it, then purged without a trace."""

import fcntl
import glob
import os
import shutil
import subprocess

import pytest
from skbt_package_helpers import (
    REPO,
    __version__,
    check_short_trace,
    check_version,
    clean_env,
    library_paths,
    rows_module_path,
    run,
)

from skbtracer_lib.config import completion

PACKAGE = "skbtracer"
# One install-use-purge at a time on a machine (two test runs would purge each other's)
INSTALL_LOCK = "/run/lock/skbtracer-package-test.lock"
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
# What the package must put where (the rest of its files are checked by purge)
EXPECTED = ["/usr/sbin/skbtracer",
            "/usr/lib/python3/dist-packages/skbtracer_lib/__init__.py",
            "/usr/share/skbtracer/skbtracer.c",
            "/usr/share/man/man8/skbtracer.8.gz",
            "/usr/share/doc/skbtracer/skbtracer_example.txt",
            "/usr/share/bash-completion/completions/skbtracer"]


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    out = tmp_path_factory.mktemp("deb")
    run([os.path.join(REPO, "scripts", "build-deb.sh"), str(out)])
    debs = glob.glob(str(out / "skbtracer_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@pytest.fixture(scope="module")
def installed(deb):
    """apt-get install ./skbtracer_*.deb; the files dpkg says are the package's."""
    with open(INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            pytest.fail("skbtracer is already installed here: purge it before the test")
        try:
            run(APT + ["install", "./" + os.path.basename(deb)], cwd=os.path.dirname(deb),
                env=dict(clean_env(), DEBIAN_FRONTEND="noninteractive"))
            yield run(["dpkg", "-L", PACKAGE]).split("\n")[:-1]
        finally:
            if _installed():        # the purge test failed or did not run
                subprocess.run(APT + ["purge", PACKAGE], stdout=subprocess.DEVNULL)


def _installed():
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
    return status.endswith(" installed")


def test_lintian_finds_no_errors(deb):
    # --fail-on error (the default): warnings are reported but pass
    out = run(["lintian", "--allow-root", "--fail-on", "error", deb])
    assert not [line for line in out.splitlines() if line.startswith("E:")], out


def test_control_fields(deb):
    fields = run(["dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends"])
    assert "Version: %s\n" % __version__ in fields
    depends = {d.strip().split()[0] for d in fields.split("Depends:")[1].split(",")}
    assert {"python3-bpfcc", "libpcap0.8"} <= depends and "python3-tabulate" not in depends


def test_files_in_place(installed):
    for path in EXPECTED:
        assert path in installed and os.path.isfile(path), path


def test_installed_command_version_and_help(installed):
    assert shutil.which("skbtracer", path=clean_env()["PATH"]) == "/usr/sbin/skbtracer"
    check_version(["skbtracer"])
    out = run(["skbtracer", "-h"], env=clean_env(), cwd="/")
    assert out.startswith("usage: skbtracer ") and "--version" in out
    assert "skbtracer.py" not in out        # the examples name the installed command


def test_installed_library_is_debians(installed):
    """Debian's python3 imports the package's library and finds its C half."""
    assert library_paths("/usr/bin/python3") == (
        "/usr/lib/python3/dist-packages/skbtracer_lib/program/source.py",
        "/usr/share/skbtracer/skbtracer.c")


def test_installed_library_has_its_rows_in_c(installed):
    path = rows_module_path("/usr/bin/python3")
    assert path.startswith("/usr/lib/python3/dist-packages/skbtracer_lib/events/_rows.") and path in installed


def test_man_page(installed):
    where = run(["man", "-w", "skbtracer"], env=clean_env())
    assert where == "/usr/share/man/man8/skbtracer.8.gz\n"
    text = run(["man", "8", "skbtracer"], env=dict(clean_env(), MANPAGER="cat", MANWIDTH="80"))
    assert "skbtracer %s" % __version__ in text


def test_bash_completion(installed):
    """The installed completion is the one generated from the flags, and works."""
    path = "/usr/share/bash-completion/completions/skbtracer"
    with open(path) as f:
        assert f.read() == completion.bash()
    script = ('source %s; COMP_WORDS=(skbtracer --pro); COMP_CWORD=1; '
              '_skbtracer skbtracer --pro skbtracer; echo "${COMPREPLY[*]}"' % path)
    assert run(["bash", "-c", script]) == "--proto\n"


def test_installed_command_traces(installed):
    check_short_trace(["skbtracer"])


def test_purge_leaves_nothing(installed):
    run(APT + ["purge", PACKAGE], env=dict(clean_env(), DEBIAN_FRONTEND="noninteractive"))
    assert not _installed()
    left = [p for p in installed if p != "/." and os.path.lexists(p)]
    # directories like /usr/share/doc stay: they must belong to other packages
    files = [p for p in left if not os.path.isdir(p) or os.path.islink(p)]
    assert not files, files
    owners = subprocess.run(["dpkg-query", "-S"] + left, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    unowned = [line.split(":", 1)[1].strip() for line in owners.stderr.splitlines()
               if "no path found" in line]
    assert not unowned, unowned
