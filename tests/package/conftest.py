"""Tests of skbtracer as installed: the Debian package (apt-get install of
the .deb built from an export of HEAD) and the pip path in a fresh venv. Each
ends with one short real trace by the installed command, on this host's
kernel. They install into the system, so they need root."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        for item in items:
            item.add_marker(pytest.mark.skip(reason="needs root"))
