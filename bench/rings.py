"""Part 1's rings: the same events laid out in memory files as the kernel
lays them out, for each tool's real reader (userspace.compare_readers)."""

import ctypes
import os


class KernelRings:
    """The same events, n of them (the workload's ring round and round),
    laid out in memory files as the kernel lays them out: a BPF ring buffer
    for ours (read by skbtracer_lib.reader, as a live run does) and one
    CPU's perf ring for the original (read by bcc's own C perf reader,
    perf_reader_event_read, calling back into Python through the ctypes
    thunk and bcc's raw_cb_ wrapper, as the original's perf_buffer_poll
    does). Both rings are big enough for all n: nothing wraps."""

    def __init__(self, raws, n):
        import mmap

        from skbtracer_lib.events import reader
        self.n = n
        page = reader.PAGE_SIZE
        events = [raws[k % len(raws)] for k in range(n)]
        ring = b"".join(struct_header(len(r)) + r for r in events)   # 8-byte headers, 8-aligned sizes
        self.ring_size = _power_of_two_pages(len(ring))
        self.ring_fd = os.memfd_create("bench-ringbuf")
        os.ftruncate(self.ring_fd, 2 * page + 2 * self.ring_size)
        self.ring_map = mmap.mmap(self.ring_fd, 2 * page + 2 * self.ring_size)
        self.ring_map[2 * page:2 * page + len(ring)] = ring
        self.ring_bytes = len(ring)
        perf = b"".join(perf_sample(r) for r in events)
        self.perf_pages = _power_of_two_pages(len(perf)) // page
        self.perf_fd = os.memfd_create("bench-perf")
        os.ftruncate(self.perf_fd, page + self.perf_pages * page)
        self.perf_map = mmap.mmap(self.perf_fd, page + self.perf_pages * page)
        self.perf_map[page:page + len(perf)] = perf
        self.perf_bytes = len(perf)

    def ours(self, handle, batch=None):
        """Read all n events into handle(bytes) with skbtracer's reader
        (batch: the text rows in C, as a live run reads them)."""
        from skbtracer_lib.events import reader
        self.ring_map[0:8] = bytes(8)                                    # consumer
        self.ring_map[reader.PAGE_SIZE:reader.PAGE_SIZE + 8] = self.ring_bytes.to_bytes(8, "little")
        rb = reader.RingBufferReader(self.ring_fd, self.ring_size, handle, batch)
        try:
            count = rb.read()
        finally:
            rb.close()
        assert count == self.n, (count, self.n)

    def theirs(self, callback, cpu=0):
        """Read all n events into callback(cpu, address, size) with bcc's
        perf reader, wrapped as bcc's PerfEventArray wraps it."""
        import errno

        from bcc.libbcc import _LOST_CB_TYPE, _RAW_CB_TYPE, lib
        _declare_perf_reader(lib, _RAW_CB_TYPE, _LOST_CB_TYPE)

        def raw_cb_(_, data, size):          # bcc's table.py, as written
            try:
                callback(cpu, data, size)
            except IOError as e:
                if e.errno == errno.EPIPE:
                    exit()
                else:
                    raise e
        fn = _RAW_CB_TYPE(raw_cb_)
        self.perf_map[1024:1040] = self.perf_bytes.to_bytes(8, "little") + bytes(8)  # head, tail
        perf_reader = lib.perf_reader_new(fn, ctypes.cast(None, _LOST_CB_TYPE), None,
                                          self.perf_pages)
        try:
            lib.perf_reader_set_fd(perf_reader, os.dup(self.perf_fd))  # free() closes it
            if lib.perf_reader_mmap(perf_reader) < 0:
                raise RuntimeError("perf_reader_mmap failed")
            lib.perf_reader_event_read(perf_reader)
        finally:
            lib.perf_reader_free(perf_reader)
        tail = int.from_bytes(self.perf_map[1032:1040], "little")
        assert tail == self.perf_bytes, (tail, self.perf_bytes)

    def close(self):
        self.ring_map.close()
        self.perf_map.close()
        os.close(self.ring_fd)
        os.close(self.perf_fd)


def struct_header(length):
    return length.to_bytes(4, "little") + bytes(4)


def perf_sample(raw):
    """A PERF_RECORD_SAMPLE of raw as the kernel writes it (u32 size
    counting the padding to 8)."""
    raw_size = (4 + len(raw) + 7) // 8 * 8 - 4
    body = raw_size.to_bytes(4, "little") + raw.ljust(raw_size, b"\0")
    return (9).to_bytes(4, "little") + (0).to_bytes(2, "little") + \
        (8 + len(body)).to_bytes(2, "little") + body


def _power_of_two_pages(nbytes):
    page = os.sysconf("SC_PAGE_SIZE")
    size = page
    while size < nbytes:
        size *= 2
    return size


def _declare_perf_reader(lib, raw_cb_type, lost_cb_type):
    """bcc's Python module does not declare these (it opens readers through
    bpf_open_perf_buffer)."""
    lib.perf_reader_new.restype = ctypes.c_void_p
    lib.perf_reader_new.argtypes = [raw_cb_type, lost_cb_type, ctypes.py_object, ctypes.c_int]
    lib.perf_reader_set_fd.restype = None
    lib.perf_reader_set_fd.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.perf_reader_mmap.restype = ctypes.c_int
    lib.perf_reader_mmap.argtypes = [ctypes.c_void_p]
    lib.perf_reader_event_read.restype = None
    lib.perf_reader_event_read.argtypes = [ctypes.c_void_p]
