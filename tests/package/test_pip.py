"""The pip path README documents for PEP 668 systems (Debian 12): a venv
that sees Debian's bcc (--system-site-packages) and `pip install .` of a
checkout, giving a `skbtracer` entry point that traces."""

import os

import pytest

from skbt_package_helpers import (REPO, check_short_trace, check_version, clean_env,
                                  library_paths, rows_module_path, run)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """README's commands, on HEAD exported as a clean clone has it (pip
    builds in the source tree)."""
    top = tmp_path_factory.mktemp("pip")
    checkout, env_dir = str(top / "skbtracer"), str(top / "venv")
    run([os.path.join(REPO, "scripts", "export-head.sh"), checkout])
    run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", env_dir], env=clean_env())
    run([env_dir + "/bin/pip", "install", "--quiet", "--disable-pip-version-check", "."],
        cwd=checkout, env=clean_env())
    return env_dir


def test_entry_point_version(venv):
    check_version([venv + "/bin/skbtracer"])


def test_venv_library_and_c_source(venv):
    library, c_source = library_paths(venv + "/bin/python")
    assert library.startswith(venv + "/lib/") and c_source == venv + "/share/skbtracer/skbtracer.c"


def test_venv_has_the_rows_in_c(venv):
    """setup.py's optional extension was built (compiler and headers are here)."""
    assert rows_module_path(venv + "/bin/python").startswith(venv + "/lib/")


def test_entry_point_traces(venv):
    check_short_trace([venv + "/bin/skbtracer"])
