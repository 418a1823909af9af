"""The batch reader on synthetic rings laid out as the kernel lays them out
(files in memory, mmapped the way the reader maps the kernel's): every
record handed on once, in order, across the ring's end, busy and discarded
records, perf lost records; no bcc imported."""

import mmap
import os
import random
import struct

import pytest

from skbtracer_lib.events import reader
from skbtracer_lib.events.reader import PAGE_SIZE, PerfRing, RingBufferReader

SEED = 14


class SyntheticRingBuffer:
    """A BPF ring buffer: consumer page, producer page, data pages twice
    (what the kernel's double mapping shows)."""

    def __init__(self, pages):
        self.size = pages * PAGE_SIZE
        self.fd = os.memfd_create("ringbuf")
        os.ftruncate(self.fd, 2 * PAGE_SIZE + 2 * self.size)
        self.map = mmap.mmap(self.fd, 2 * PAGE_SIZE + 2 * self.size)
        self.producer = 0

    @property
    def consumer(self):
        return struct.unpack_from("<Q", self.map, 0)[0]

    def _write(self, position, data):
        for copy in (0, self.size):
            for k, byte in enumerate(data):
                at = (position + k) % self.size
                self.map[2 * PAGE_SIZE + copy + at] = byte

    def room(self, length):
        return self.size - (self.producer - self.consumer) >= (length + 8 + 7) // 8 * 8

    def put(self, payload, busy=False, discard=False):
        """A record; busy: reserved, not committed (the producer moves anyway)."""
        length = len(payload) | (reader.RINGBUF_BUSY if busy else 0) | (
            reader.RINGBUF_DISCARD if discard else 0)
        self._write(self.producer, struct.pack("<II", length, 0) + payload)
        at = self.producer
        self.producer += (len(payload) + 8 + 7) // 8 * 8
        struct.pack_into("<Q", self.map, PAGE_SIZE, self.producer)
        return at

    def commit(self, at, length):
        self._write(at, struct.pack("<I", length))

    def reader(self, handle):
        return RingBufferReader(self.fd, self.size, handle)


def test_ring_buffer_every_record_once_in_order_across_the_end():
    rng = random.Random(SEED)
    ring = SyntheticRingBuffer(pages=1)
    got = []
    rb = ring.reader(got.append)
    sent = []
    for batch in range(300):           # ~60 times round a one-page ring
        for _ in range(rng.randrange(1, 12)):
            payload = bytes([batch % 256]) * rng.choice([200, 200, 208, 1, 7, 301])
            if not ring.room(len(payload)):
                break
            ring.put(payload)
            sent.append(payload)
        assert rb.read() >= 1
        assert ring.consumer == ring.producer
    assert got == sent
    assert ring.producer > 50 * ring.size


def test_ring_buffer_stops_at_a_busy_record_and_skips_discarded_ones():
    ring = SyntheticRingBuffer(pages=1)
    got = []
    rb = ring.reader(got.append)
    ring.put(b"a" * 200)
    ring.put(b"gone" * 50, discard=True)
    busy_at = ring.put(b"b" * 200, busy=True)
    ring.put(b"c" * 200)
    assert rb.read() == 2
    assert got == [b"a" * 200]
    assert ring.consumer == busy_at              # the kernel may not reuse it yet
    ring.commit(busy_at, 200)
    assert rb.read() == 2
    assert got == [b"a" * 200, b"b" * 200, b"c" * 200]
    assert rb.read() == 0


class SyntheticPerfRing:
    """One CPU's perf ring: struct perf_event_mmap_page, then the data."""

    def __init__(self, pages):
        self.size = pages * PAGE_SIZE
        self.fd = os.memfd_create("perf")
        os.ftruncate(self.fd, PAGE_SIZE + self.size)
        self.map = mmap.mmap(self.fd, PAGE_SIZE + self.size)
        self.head = 0

    @property
    def tail(self):
        return struct.unpack_from("<Q", self.map, 1032)[0]

    def _record(self, record):
        assert len(record) % 8 == 0 and self.size - (self.head - self.tail) >= len(record)
        for k, byte in enumerate(record):
            self.map[PAGE_SIZE + (self.head + k) % self.size] = byte
        self.head += len(record)
        struct.pack_into("<Q", self.map, 1024, self.head)

    def sample(self, payload):
        """As the kernel pads it: the u32 size counts the padding too."""
        raw_size = (4 + len(payload) + 7) // 8 * 8 - 4
        body = struct.pack("<I", raw_size) + payload.ljust(raw_size, b"\0")
        self._record(struct.pack("<IHH", reader.PERF_RECORD_SAMPLE, 0, 8 + len(body)) + body)
        return payload.ljust(raw_size, b"\0")

    def lost(self, count):
        self._record(struct.pack("<IHHQQ", reader.PERF_RECORD_LOST, 0, 24, 7, count))


def test_perf_ring_samples_in_order_wrapped_records_whole_lost_counted():
    rng = random.Random(SEED)
    perf = SyntheticPerfRing(pages=1)
    ring = PerfRing(perf.fd, 1)
    got, lost = [], []
    sent, dropped = [], 0
    for _ in range(400):
        for _ in range(rng.randrange(1, 10)):
            if rng.random() < 0.1:
                n = rng.randrange(1, 1000)
                perf.lost(n)
                dropped += n
            elif perf.size - (perf.head - perf.tail) >= 512:
                sent.append(perf.sample(rng.randbytes(rng.choice([200, 200, 123, 301]))))
        ring.read(got.append, lost.append)
        assert perf.tail == perf.head
    assert got == sent and sum(lost) == dropped
    assert perf.head > 50 * perf.size


def test_buffer_pages_from_the_environment(monkeypatch):
    monkeypatch.delenv(reader.BUFFER_PAGES_ENV, raising=False)
    assert reader.buffer_pages(64) == 64
    monkeypatch.setenv(reader.BUFFER_PAGES_ENV, "1")
    assert reader.buffer_pages(64) == 1
    for bad in ("3", "0", "-4", "x", "1e3", str(1 << 19)):
        monkeypatch.setenv(reader.BUFFER_PAGES_ENV, bad)
        with pytest.raises(reader.ReaderError):
            reader.buffer_pages(64)


def test_positions_shared_with_the_kernel_are_whole_words():
    """The consumer position is stored, and the producer position and the
    headers loaded, as single aligned words (memoryview casts): struct goes
    byte by byte, and a consumer position the kernel reads half written
    makes the ring look full (an event lost here and there under load)."""
    ring = SyntheticRingBuffer(pages=1)
    rb = ring.reader(lambda raw: None)
    try:
        assert (rb.consumer_word.format, rb.consumer_word.nbytes) == ("Q", 8)
        assert (rb.producer_word.format, rb.producer_word.nbytes) == ("Q", 8)
        assert rb.headers.format == "I"
        ring.put(b"x" * 200)
        rb.read()
        assert ring.consumer == ring.producer == rb.consumer_word[0]
    finally:
        rb.close()
