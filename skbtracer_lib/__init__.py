"""skbtracer's library: flags, BPF building, decoding and output."""

# The one place the version is written. setup.cfg reads it (attr:), and
# tests/unit/test_version.py checks that debian/changelog and the man page
# agree with it.
__version__ = "0.1.0"
