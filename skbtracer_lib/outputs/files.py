"""Files for rows: whole lines to a descriptor (LineSink), and the files
-o, --json=FILE and -w name, opened without following symlinks."""

import errno
import os
import stat
import sys

from ..config import existing_file_problem
from ..program.kernel import KernelError


class OutputError(Exception):
    """Rows could not be written (full disk, file size limit, I/O error)."""


class LineSink:
    """Whole lines to a file descriptor, never part of one.

    Text is gathered and written with os.write in chunks that end at a
    line; when a write fails after part of a chunk reached a regular file,
    the file is cut back to its last complete line, so what was written
    before the failure stays intact. EPIPE stays BrokenPipeError (`| head`);
    anything else becomes OutputError(what, strerror).

    rotation: a rotate.Rotation (--rotate): a file that would pass its
    size is cut at a line's end and the rest goes to a new file, after
    preamble (bytes: the header row, the JSON start object)."""

    FLUSH_BYTES = 1 << 16

    def __init__(self, stream, what, rotation=None):
        stream.flush()              # whatever went through it before us
        self.stream = stream        # owns the descriptor
        self.fd = stream.fileno()
        self.what = what
        self.pending = []           # text
        self.encoded = []           # bytes: pending's text encoded, and write_bytes()'
        self.size = 0
        self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.rotation = rotation
        self.preamble = b""
        self.file_bytes = 0         # in the file being written (--rotate)

    def write(self, text):
        self.pending.append(text)
        self.size += len(text)
        if self.size >= self.FLUSH_BYTES:
            self.flush()

    def write_bytes(self, data):
        """Rows already encoded (UTF-8), after what write() was given."""
        self._encode_pending()
        self.encoded.append(data)
        self.size += len(data)
        if self.size >= self.FLUSH_BYTES:
            self.flush()

    def _encode_pending(self):
        if self.pending:
            self.encoded.append("".join(self.pending).encode("utf-8", "backslashreplace"))
            self.pending = []

    def flush(self):
        self._encode_pending()
        if not self.encoded:
            return
        data = b"".join(self.encoded) if len(self.encoded) > 1 else self.encoded[0]
        self.encoded = []
        self.size = 0
        if self.rotation is not None:
            data = self._rotate_as_needed(data)
        self._write(data)

    def _rotate_as_needed(self, data):
        """The lines of data that fit the file written, in as many files as
        they take; what is left for the last one."""
        return fill(data, lambda rest: self.file_bytes + len(rest) <= self.rotation.size,
                    self._lines_that_fit, self._write, self._next_file)

    def _lines_that_fit(self, data):
        """Where data is cut: after the last row that fits, with the stack
        lines under it (they begin with a space); in a file that holds no
        row yet, after the first row however long."""
        cut = data.rfind(b"\n", 0, max(0, self.rotation.size - self.file_bytes)) + 1
        while cut and data[cut:cut + 1] == b" ":
            cut = data.rfind(b"\n", 0, cut - 1) + 1
        if cut == 0 and self.file_bytes <= len(self.preamble):
            cut = data.find(b"\n") + 1
            while cut and data[cut:cut + 1] == b" ":
                cut = data.find(b"\n", cut) + 1
            return cut or len(data)
        return cut

    def _next_file(self):
        try:
            self.stream = self.rotation.next_file()
        except (OSError, FileError) as e:
            why = getattr(e, "strerror", None) or e
            raise OutputError("%s: cannot rotate: %s" % (self.what, why)) from None
        self.fd = self.stream.fileno()
        self.file_bytes = 0
        self._write(self.preamble)

    def _write(self, data):
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, view[done:])
        except BrokenPipeError:
            raise
        except OSError as e:
            self._cut_partial_line(data, done)
            raise OutputError("%s: %s" % (self.what, e.strerror)) from None
        finally:
            self.file_bytes += done

    def _cut_partial_line(self, data, done):
        if not self.regular or done == 0:
            return
        partial = done - (data.rfind(b"\n", 0, done) + 1)
        if partial:
            try:
                os.ftruncate(self.fd, os.lseek(self.fd, 0, os.SEEK_CUR) - partial)
            except OSError:
                pass


def fill(data, fits, cut, write, next_file):
    """--rotate's loop, for rows (bytes) and pcapng blocks (a list of them):
    while data does not all fit the file (fits(data) false), write the
    first cut(data) of it (what fits, or one row or block in a file that
    holds none yet) and go on in next_file(); what is left for the file."""
    while data and not fits(data):
        end = cut(data)
        write(data[:end])
        data = data[end:]
        if data:
            next_file()
    return data


def line_sink(stream, what, rotation=None):
    """A LineSink for a stream with a file descriptor; other streams (tests'
    StringIO) are written to as they are."""
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    return LineSink(stream, what, rotation)


def bytes_writer(sink):
    """sink's write_bytes(), or for a text stream one that decodes first."""
    write_bytes = getattr(sink, "write_bytes", None)
    if write_bytes is not None:
        return write_bytes
    return lambda data: sink.write(data.decode("utf-8"))


# -- files for -o, --json=FILE and -w

class FileError(KernelError):
    """A file named on the command line cannot be opened for writing (one
    line, exit 1; a KernelError too, for callers that say both alike)."""


def open_new_file(flag, path, force, binary=False):
    """Open a file for rows (binary: for blocks). Creates it exclusively;
    an existing one is opened only as existing_file_problem()
    allows, checked on the opened file itself (it may have changed since
    the flags were checked). Never follows a symlink."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            fd = _open_existing(flag, path, force, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FileError("%s: %r is a symbolic link; refusing to follow it" % (flag, path))
        raise FileError("%s: cannot write %r: %s" % (flag, path, e.strerror))
    if binary:
        return os.fdopen(fd, "wb")
    return os.fdopen(fd, "w", encoding="utf-8")


def _open_existing(flag, path, force, flags):
    # O_NONBLOCK: a FIFO without a reader must not hang the open (ENXIO)
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ENXIO or not stat.S_ISFIFO(os.lstat(path).st_mode):
            raise
        sys.stderr.write("skbtracer: %s: waiting for a reader of %r\n" % (flag, path))
        fd = os.open(path, flags)
    st = os.fstat(fd)
    problem = existing_file_problem(st, force)
    if problem:
        os.close(fd)
        raise FileError("%s: %r %s" % (flag, path, problem))
    os.set_blocking(fd, True)
    if stat.S_ISREG(st.st_mode):
        os.ftruncate(fd, 0)     # --force
    return fd
