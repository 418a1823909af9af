"""--rotate SIZE: an output file (-o, --json=FILE, -w) closed once it holds
SIZE bytes and renamed FILE.1 (FILE.1 becoming FILE.2 ...), a new FILE
opened in its place; at most --rotate-files files in all, the oldest
removed. Files are cut only between whole rows, JSON lines or pcapng
blocks, and each new file begins as a file of its own does (the text
header, the JSON start object, the pcapng section and interfaces), so
every file of the set is read on its own; -r FILE reads the whole set
(rotated_set)."""

import os
import re

from .files import FileError, open_new_file

SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_ROTATE_FILES = 10000
MIN_PCAPNG_ROTATE = 64 << 10    # twice a section header's story space (capture.STORY_SPACE)


def parse_size(text):
    """'100M', '10k', '1G', '4096' -> bytes (k, M, G: powers of 1024);
    ValueError for anything else, or 0."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if not match:
        raise ValueError("must be a size such as 100M, 10k or 1G, not %r" % text)
    size = int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]
    if size <= 0:
        raise ValueError("must be more than 0 bytes, not %r" % text)
    return size


def rotated_name(path, number):
    """FILE (0), FILE.1, FILE.2 ... (older)."""
    return path if number == 0 else "%s.%d" % (path, number)


def rotated_siblings(path):
    """The numbers N of the FILE.N that exist next to path, oldest (highest) first."""
    directory = os.path.dirname(path) or "."
    prefix = os.path.basename(path) + "."
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    numbers = [int(name[len(prefix):]) for name in names
               if name.startswith(prefix) and name[len(prefix):].isdigit()
               and not name[len(prefix):].startswith("0")]
    return sorted(numbers, reverse=True)


def rotated_set(path):
    """-r FILE: FILE's rotated set in time order (FILE.N ... FILE.1, FILE),
    or [path] when it has none."""
    return [rotated_name(path, n) for n in rotated_siblings(path)] + [path]


class Rotation:
    """The files of one output under --rotate: file is the one being
    written (FILE); next_file() puts it aside and opens a new FILE."""

    def __init__(self, flag, path, size, keep, binary, file):
        self.flag = flag
        self.path = path
        self.size = size            # bytes a file holds at most (but one row or block)
        self.keep = keep            # files in all, FILE included
        self.binary = binary
        self.file = file
        self.rotated = 0            # times a file was put aside

    def next_file(self):
        """Close FILE, shift FILE.N to FILE.N+1 (the oldest past the bound
        removed), and open a new FILE; its file object."""
        self.file.close()
        for number in rotated_siblings(self.path):
            name = rotated_name(self.path, number)
            if number + 1 >= self.keep:
                _remove(name)
            else:
                os.rename(name, rotated_name(self.path, number + 1))
        if self.keep > 1:
            os.rename(self.path, rotated_name(self.path, 1))
        else:
            _remove(self.path)
        self.file = open_new_file(self.flag, self.path, False, binary=self.binary)
        self.rotated += 1
        return self.file

    def close(self):
        self.file.close()

    def said(self):
        """What the exit line adds: how many older files there are."""
        kept = min(self.rotated, self.keep - 1)
        if not kept:
            return ""
        return " (and %d older file%s, %s.1 ... %s.%d)" % (
            kept, "s" if kept > 1 else "", self.path, self.path, kept)


def _remove(name):
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def remove_old_set(flag, path):
    """--force with --rotate: the FILE.N a previous run left go first (they
    would be read as this run's by -r); FileError when one cannot."""
    for number in rotated_siblings(path):
        try:
            _remove(rotated_name(path, number))
        except OSError as e:
            raise FileError("%s: cannot remove %r: %s"
                            % (flag, rotated_name(path, number), e.strerror))
