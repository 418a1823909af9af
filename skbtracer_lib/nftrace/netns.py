"""Opening a socket in another network namespace: the calling thread joins
it (setns), the socket is made, the thread goes home. A netlink socket
stays in the namespace it was made in, so the ruleset commands and the
trace messages on it are that namespace's."""

import contextlib
import ctypes
import os

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    pass


def _setns(fd, what):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError("cannot enter %s: %s" % (what, os.strerror(errno)))


@contextlib.contextmanager
def inside(path):
    """Run the body in the network namespace of path (None: where we are)."""
    if path is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, "network namespace %s" % path)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home, "this process's network namespace")
    finally:
        os.close(home)
