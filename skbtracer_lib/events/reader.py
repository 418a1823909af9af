"""Reading events in batches straight from the kernel's mmapped pages: the
BPF ring buffer (5.8+, one ring for all CPUs) or, on older kernels, the
perf buffer (one ring per CPU). One pass over the records per wakeup, each
event handed on as bytes: no ctypes callback per event as bcc's readers
make (0.2-0.3 us each here, bench part 1, before any of our code runs).

Layouts (include/uapi/linux/bpf.h, perf_event.h; kernel/bpf/ringbuf.c):
ring buffer: page 0 the consumer position (ours to write), page 1 the
producer position, then the data pages mapped twice in a row, so that a
record crossing the end reads as one piece; each record an 8-byte header
(u32 length with BUSY and DISCARD bits, u32 page offset), then its bytes,
padded to 8. Perf buffer: page 0 struct perf_event_mmap_page (data_head at
1024, data_tail at 1032), then the data pages once; records are
perf_event_header (u32 type, u16 misc, u16 size) then, for a sample, a u32
size and the bytes, or, for a lost record, u64 id and u64 count. x86's
ordering of loads is what makes reading the positions and headers from
Python safe; the kernel publishes a header only after the data.

The positions and headers the kernel shares with us are read and written
as whole aligned words, through memoryview casts (one 8- or 4-byte move),
never with struct, which goes byte by byte: a consumer position the kernel
reads half written looks far behind, the ring looks full and the event is
lost (one here and there, counted, under load).
"""

import ctypes
import errno
import fcntl
import mmap
import os
import select
import struct

from ..program import kernel
from ..program.macros import MAP_EVENTS
from ..program.syscalls import PERF_EVENT_OPEN, bpf, syscall

RING_BUFFER_PAGES = 1024   # one ring for all CPUs: 4 MiB with 4 KiB pages
PERF_PAGES = 64            # per CPU; 256 KiB with 4 KiB pages
# SKBTRACER_PERF_BUFFER=1: the perf buffer even where the ring buffer works
# (how the 5.4 path is tested and measured on newer kernels);
# SKBTRACER_BUFFER_PAGES=N: N pages instead (the ring buffer's, or each
# CPU's perf ring), a power of two (the tests' deliberately tiny buffers)
FORCE_PERF_ENV = "SKBTRACER_PERF_BUFFER"
BUFFER_PAGES_ENV = "SKBTRACER_BUFFER_PAGES"

PAGE_SIZE = mmap.PAGESIZE
RINGBUF_BUSY = 1 << 31
RINGBUF_DISCARD = 1 << 30
RINGBUF_HEADER = 8
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
PUBLISH_EVERY = 4096       # records: give room back to the kernel during a long batch

_U32 = struct.Struct("<I")
_PERF_HEADER = struct.Struct("<IHH")    # perf_event_header; a sample's u32 size follows
_PERF_LOST = struct.Struct("<QQ")

BPF_MAP_CREATE = 0
BPF_MAP_TYPE_RINGBUF = 27
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400


class ReaderError(Exception):
    """A buffer size that cannot be."""


def buffer_pages(default):
    """Pages of the ring: SKBTRACER_BUFFER_PAGES when set, else default."""
    text = os.environ.get(BUFFER_PAGES_ENV, "")
    if not text:
        return default
    pages = int(text) if text.isdigit() else 0
    if not 1 <= pages <= 1 << 18 or pages & (pages - 1):
        raise ReaderError("%s=%r: a power of two from 1 to %d pages"
                          % (BUFFER_PAGES_ENV, text, 1 << 18))
    return pages


def ring_buffer_available():
    """Can this kernel make a BPF ring buffer? Tried with a small map; where
    that is not allowed (not root: --ebpf), from the kernel version."""
    if os.environ.get(FORCE_PERF_ENV) == "1":
        return False
    attr = ctypes.create_string_buffer(struct.pack("<IIII", BPF_MAP_TYPE_RINGBUF, 0, 0,
                                                   PAGE_SIZE), 72)
    fd = bpf(BPF_MAP_CREATE, attr)
    if fd >= 0:
        os.close(fd)
        return True
    if fd in (-errno.EPERM, -errno.EACCES, -errno.ENOSYS):
        return kernel.version() >= (5, 8)
    return False


# Why a walk over the ring stopped (_rows.c is told these in textrow.c_spec())
STOP_END, STOP_BUSY, STOP_SLOW, STOP_COUNT = 0, 1, 2, 3


class RingBufferReader:
    """The BPF ring buffer map map_fd of data_size bytes; handle(bytes) per
    record, in the order the kernel reserved them.

    batch, where given, walks many records in one call (the text rows in C,
    live.Records.ring_batch): batch(data, base, mask, position, producer,
    max_records) -> (position, records, stop); a STOP_SLOW leaves the record
    at position to handle()."""

    def __init__(self, map_fd, data_size, handle, batch=None):
        self.handle = handle
        self.batch = batch
        self.mask = data_size - 1
        self.consumer = mmap.mmap(map_fd, PAGE_SIZE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self.data = mmap.mmap(map_fd, PAGE_SIZE + 2 * data_size, mmap.MAP_SHARED,
                              mmap.PROT_READ, offset=PAGE_SIZE)
        self.consumer_word = memoryview(self.consumer)[:8].cast("Q")  # [0]: our position
        self.producer_word = memoryview(self.data)[:8].cast("Q")      # [0]: the kernel's
        self.headers = memoryview(self.data).cast("I")    # [at // 4]: a record's length
        self.position = self.consumer_word[0]
        self.map_fd = map_fd
        self.epoll = None      # made on the first wait (the unit tests' rings are files)

    def wait(self, timeout_ms):
        """Wait up to timeout_ms for records (0: not at all), reading none."""
        if timeout_ms:
            if self.epoll is None:
                self.epoll = select.epoll()
                self.epoll.register(self.map_fd, select.EPOLLIN)
            self.epoll.poll(timeout_ms / 1000)

    def read(self):
        """Hand on every committed record; how many there were. The consumer
        position is published after every PUBLISH_EVERY records at most."""
        data, mask = self.data, self.mask
        producer_word, consumer_word = self.producer_word, self.consumer_word
        walk = self.batch or self._walk
        position = self.position
        count = 0
        while True:
            producer = producer_word[0]
            if position >= producer:
                break
            position, records, stop = walk(data, PAGE_SIZE, mask, position, producer,
                                           PUBLISH_EVERY)
            if stop == STOP_SLOW:
                position, one, stop = self._walk(data, PAGE_SIZE, mask, position, producer, 1)
                records += one
            count += records
            consumer_word[0] = position
            if stop == STOP_BUSY:
                break       # reserved, not committed: its commit wakes us
        self.position = position
        return count

    def _walk(self, data, base, mask, position, producer, max_records):
        """Records from position on to handle(), one by one."""
        handle, headers = self.handle, self.headers
        records = 0
        while position < producer and records < max_records:
            at = base + (position & mask)
            length = headers[at >> 2]
            if length & RINGBUF_BUSY:
                return position, records, STOP_BUSY
            if not length & RINGBUF_DISCARD:
                start = at + RINGBUF_HEADER
                handle(data[start:start + length])
            position += ((length & ~RINGBUF_DISCARD) + RINGBUF_HEADER + 7) & ~7
            records += 1
        return position, records, STOP_END

    def close(self):
        if self.epoll is not None:
            self.epoll.close()
        for view in (self.consumer_word, self.producer_word, self.headers):
            view.release()          # an mmap with views on it cannot close
        for m in (self.data, self.consumer):
            m.close()


def _perf_event_open(cpu):
    attr = ctypes.create_string_buffer(64)    # PERF_ATTR_SIZE_VER0
    struct.pack_into("<IIQQQ", attr, 0, PERF_TYPE_SOFTWARE, 64, PERF_COUNT_SW_BPF_OUTPUT,
                     1, PERF_SAMPLE_RAW)
    struct.pack_into("<I", attr, 48, 1)       # wakeup_events: as bcc's reader
    fd = syscall(PERF_EVENT_OPEN, attr, ctypes.c_int(-1), ctypes.c_int(cpu),
                  ctypes.c_int(-1), ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        raise OSError(-fd, "perf_event_open(cpu %d): %s" % (cpu, os.strerror(-fd)))
    return fd


class PerfRing:
    """One CPU's perf ring as mmapped pages (a perf event fd's, or any file
    laid out the same way)."""

    def __init__(self, fd, pages):
        self.fd = fd
        self.size = pages * PAGE_SIZE
        self.map = mmap.mmap(fd, PAGE_SIZE + self.size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.positions = memoryview(self.map)[1024:1040].cast("Q")   # data_head, data_tail
        self.tail = self.positions[1]

    def read(self, handle, on_lost):
        """Hand on every sample (bytes) and lost count; records read."""
        m, size, tail = self.map, self.size, self.tail
        head = self.positions[0]
        mask = size - 1
        count = 0
        while tail < head:
            at = tail & mask
            kind, _misc, length = _PERF_HEADER.unpack_from(m, PAGE_SIZE + at)
            if at + length <= size:
                record, start = m, PAGE_SIZE + at
            else:                         # the record wraps: join its two pieces
                record = (m[PAGE_SIZE + at:PAGE_SIZE + size]
                          + m[PAGE_SIZE:PAGE_SIZE + at + length - size])
                start = 0
            if kind == PERF_RECORD_SAMPLE:
                raw_size = _U32.unpack_from(record, start + 8)[0]
                handle(record[start + 12:start + 12 + raw_size])
            elif kind == PERF_RECORD_LOST:
                on_lost(_PERF_LOST.unpack_from(record, start + 8)[1])
            tail += length
            count += 1
        self.positions[1] = tail
        self.tail = tail
        return count

    def close(self):
        self.positions.release()
        self.map.close()


class PerfBufferReader:
    """A BPF_PERF_OUTPUT map map_fd: one perf event and ring per CPU, put
    into the map; handle(bytes) per sample, in order within a CPU."""

    def __init__(self, map_fd, handle, on_lost, pages, cpus=None):
        from bcc import lib
        from bcc.utils import get_online_cpus
        self.handle, self.on_lost = handle, on_lost
        self.rings = []
        self.epoll = select.epoll()
        try:
            for cpu in (get_online_cpus() if cpus is None else cpus):
                fd = _perf_event_open(cpu)
                ring = PerfRing(fd, pages)
                self.rings.append(ring)
                key, value = ctypes.c_int(cpu), ctypes.c_int(fd)
                if lib.bpf_update_elem(map_fd, ctypes.byref(key), ctypes.byref(value), 0) < 0:
                    raise OSError(ctypes.get_errno(), "cannot add CPU %d's perf ring" % cpu)
                fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
                self.epoll.register(fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    def wait(self, timeout_ms):
        if timeout_ms:
            self.epoll.poll(timeout_ms / 1000)

    def read(self):
        return sum(ring.read(self.handle, self.on_lost) for ring in self.rings)

    def close(self):
        self.epoll.close()
        for ring in self.rings:
            ring.close()
            os.close(ring.fd)
        self.rings = []


def open_reader(bpf, ring_buffer_pages, perf_pages, handle, on_lost, batch=None):
    """The reader of bcc module bpf's "events" map: a ring buffer of
    ring_buffer_pages pages (batch: see RingBufferReader), or (None) a perf
    buffer of perf_pages per CPU."""
    table = bpf[MAP_EVENTS]
    if ring_buffer_pages:
        return RingBufferReader(table.map_fd, ring_buffer_pages * PAGE_SIZE, handle, batch)
    return PerfBufferReader(table.map_fd, handle, on_lost, perf_pages)
