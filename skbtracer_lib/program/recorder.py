"""--on-trouble, the flight recorder (skbtracer.c's RECORDER): what the C is
told, and what its counters say.

The kernel keeps each wanted skb's last SIGHTINGS rows in an LRU hash of
--recorder-size skbs and sends them only on trouble (a drop, a duplicate,
--slow). An skb whose record the LRU evicted while it was in flight is
forgotten; the C cannot see an eviction, so it counts records started and
ended, and the records still in flight are counted here:
forgotten = started - ended - in flight.

The duplicate check's memory (places: where each packet first arrived, an
LRU hash of as many entries, never deleted from) forgets too: the C counts
the keys it adds, and places forgotten = added - kept. Which of them were
younger than the duplicate window (a duplicate of theirs would go unseen)
cannot be counted: the LRU evicts without a word (no program runs on an
eviction), and the kept entries say nothing of the evicted ones' age."""

import ctypes
import time

from . import macros
from ..events import fields
from ..story.points import FREE_POINTS, JOIN_WINDOW_NS, LOCAL_POINTS, RX_POINTS, SOCKET_POINTS

SIGHTINGS = 32                  # rows kept per skb (a power of two)
DEFAULT_ENTRIES = 4096
MIN_ENTRIES, MAX_ENTRIES = 16, 65536
# struct sighting and the head of struct flight, in bytes (skbtracer.c)
SIGHTING_BYTES, FLIGHT_HEAD_BYTES = 112, 48
# recorder_counts' slots, in this order; TROUBLES: the ones told at exit
COUNTERS = ("started", "ended", "drops", "duplicates", "slow", "places")
TROUBLES = ("drops", "duplicates", "slow")
MIN_SLOW_NS, MAX_SLOW_NS = 1_000, 3600 * 10**9
SLOW_UNITS = {"us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "": 10**9}


# --slow times the way to a socket: not a free, nor the wait in a socket's
# queue for the reader (the C's RECORDER_UNTIMED)
UNTIMED_POINTS = FREE_POINTS | set(SOCKET_POINTS)


def memory_bytes(entries):
    """The records' kernel memory for --recorder-size entries."""
    return entries * (FLIGHT_HEAD_BYTES + SIGHTINGS * SIGHTING_BYTES)


def defines(cfg, probes):
    """The C's #defines for --on-trouble; probes: the plan's (id, name, extra)."""
    places = _ids_at(probes, RX_POINTS)
    untimed = _ids_at(probes, UNTIMED_POINTS)
    d = {macros.RECORDER: 1,
         macros.RECORDER_ENTRIES: cfg.recorder_size,
         macros.RECORDER_SIGHTINGS: SIGHTINGS,
         macros.RECORDER_COUNTS: len(COUNTERS),
         macros.RECORDER_DUPLICATE_NS: "%dULL" % JOIN_WINDOW_NS,
         "%s(p)" % macros.RECORDER_PLACE:
             _any_of(places),
         "%s(p)" % macros.RECORDER_UNTIMED: _any_of(untimed)}
    for i, name in enumerate(COUNTERS):
        d[getattr(macros, "RECORDER_COUNT_" + name.upper())] = i
    if cfg.slow_ns is not None:
        d[macros.RECORDER_SLOW_NS] = "%dULL" % cfg.slow_ns
    return d


def _ids_at(probes, names):
    """The ids of the plan's own probes (not --all's extras) at names, in order."""
    return [p.id for p in probes if p.name in names and not p.extra]


def _any_of(ids):
    """A C expression of p: is it one of ids?"""
    return "(%s)" % (" || ".join("(p) == %d" % i for i in ids) or "0")


def parse_slow(text):
    """--slow's DURATION (100ms, 2s, 500us; a plain number is seconds) in
    nanoseconds; ValueError says why not."""
    import re
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(us|ms|s|m|)\s*", text)
    if not match:
        raise ValueError("must be a duration such as 100ms, 2s or 500us, not %r" % text)
    ns = round(float(match.group(1)) * SLOW_UNITS[match.group(2)])
    if not MIN_SLOW_NS <= ns <= MAX_SLOW_NS:
        raise ValueError("must be between 1us and 1h, not %s" % text.strip())
    return ns


class Counts:
    """What the recorder has done so far, read from a loaded program."""

    def __init__(self, bpf, sweep=None):
        self.bpf = bpf
        self.sweep = sweep          # --slow's Sweep: the records it told

    def _counters(self):
        table = self.bpf[macros.MAP_RECORDER_COUNTS]
        return {name: int(table.sum(table.Key(i)).value) for i, name in enumerate(COUNTERS)}

    def _in_flight(self):
        return sum(1 for _key, flight in self.bpf[macros.MAP_FLIGHTS].items()
                   if not flight.freed_ns)

    def read(self):
        """{counter: value} and "forgotten"; the counters read again until
        they held still around the count of the records in flight."""
        before = self._counters()
        for _attempt in range(3):
            in_flight = self._in_flight()
            after = self._counters()
            if after == before:
                break
            before = after
        counts = dict(after)
        counts["forgotten"] = max(0, after["started"] - after["ended"] - in_flight)
        if self.sweep is not None:
            counts["slow"] += self.sweep.told
        places = self._kept_places()
        counts["places_forgotten"] = max(0, counts.pop("places") - places)
        return counts

    def _kept_places(self):
        return len(entries(self.bpf[macros.MAP_PLACES]))


def summary(counts, previous=None):
    """'T troubles told (d drops, u duplicates, s slow), N skbs forgotten,
    P places forgotten' (the duplicate check's);
    with previous counts, each total's growth since then too."""
    def since(name):
        return " (+%d)" % (counts[name] - previous[name]) if previous else ""
    told = sum(counts[t] for t in TROUBLES)
    told_before = sum(previous[t] for t in TROUBLES) if previous else 0
    kinds = ", ".join("%d %s" % (counts[t], t) for t in TROUBLES)
    return "%d troubles told%s (%s), %d skbs forgotten%s, %d places forgotten%s" % (
        told, " (+%d)" % (told - told_before) if previous else "", kinds,
        counts["forgotten"], since("forgotten"), counts["places_forgotten"],
        since("places_forgotten"))


# --slow's sweep: a stuck skb (queued for a neighbour that never answers,
# held in a qdisc) has no later row to be told at; the sweep reads the
# records in flight (the small index skbtracer.c keeps with --slow) every
# SWEEP_FRACTION of --slow, within these bounds, and tells those older than
# --slow. Its cost: one batch read of the index (the skbs in flight, at most
# --recorder-size small entries) per sweep, and once per record older than
# --slow a read of the record; each record is judged once.
SWEEP_FRACTION = 4
MIN_SWEEP_NS, MAX_SWEEP_NS = 10 * 10**6, 10**9
# a record whose last row is at one of these is not in the network's hands:
# freed, handed to its transport protocol or to a socket (waiting for the
# reader is not --slow's, as the C's RECORDER_UNTIMED)
ARRIVED_POINTS = UNTIMED_POINTS | (LOCAL_POINTS - {"ip_local_deliver", "ip6_input"})
BPF_NOEXIST = 1


def sweep_period_ns(slow_ns):
    return min(MAX_SWEEP_NS, max(MIN_SWEEP_NS, slow_ns // SWEEP_FRACTION))


def arrived_probes(probes):
    """The ids of the plan's probes (id, name, extra) in ARRIVED_POINTS;
    where no probe sees local delivery (the tracepoint backend), the
    receive points' too: after one, a datagram waiting in its socket's
    queue for the reader and a stuck skb look alike (no row until the read)."""
    arrived = ARRIVED_POINTS if _ids_at(probes, LOCAL_POINTS) else ARRIVED_POINTS | RX_POINTS
    return frozenset(_ids_at(probes, arrived))


def entries(table):
    """A map's (key, value) pairs in few system calls where the kernel
    can (5.6+: batch lookup), else one by one."""
    try:
        return list(table.items_lookup_batch())
    except Exception:       # no batch operations for this map or kernel
        return table.items()


def _number(value):
    """A u64 key or value as bcc hands it: an int (batch) or a c_ulong."""
    return value if isinstance(value, int) else value.value


class _EventBytes(ctypes.Structure):
    _pack_ = 1
    _fields_ = fields.ctypes_fields()


_EVENT_FIELDS = frozenset(name for name, _type in _EventBytes._fields_)


def _copy_fields(to, source, skip=()):
    """Copy the fields of the ctypes struct source that the event has (by
    name, byte for byte: they hold what the C copied from an event)."""
    for name, _ctype in type(source)._fields_:
        if name in _EVENT_FIELDS and name not in skip:
            into, field = getattr(type(to), name), getattr(type(source), name)
            ctypes.memmove(ctypes.addressof(to) + into.offset,
                           ctypes.addressof(source) + field.offset, min(into.size, field.size))


def told_rows(flight, skb):
    """The raw events of a record's rows not yet told, as skbtracer.c's
    tell_recorded rebuilds them: each sighting over the packet's fields the
    record keeps (no conntrack entry's detail: ct_known 0, its state only);
    the first one carries how many sightings were not kept (unkept)."""
    upto = flight.seen
    start = max(flight.told, upto - SIGHTINGS)
    rows = []
    for n in range(start, upto):
        event = _EventBytes()
        _copy_fields(event, flight, skip=("seen", "told"))
        _copy_fields(event, flight.s[n % SIGHTINGS])
        event.skb = skb
        event.stack_id = -1
        event.unkept = start - flight.told if n == start else 0
        rows.append(bytes(event))
    return rows


class Sweep:
    """--slow's userspace half (see SWEEP_FRACTION): tell(raw) gets the
    rows of each stuck record, as if the kernel had sent them.

    Races with the kernel, which may update a record while it is read here:
    who tells a slow record is decided by one insert into slow_claims
    (BPF_NOEXIST, here or in the C's told_by_sweep), so a path is told slow
    once, by one of the two, and its later rows follow from the sightings
    the sweep sent (the claim's told). What can still happen: a row the
    kernel adds between the read of the record and the claim is not in the
    sweep's rows but sent with the skb's next row, if any; a drop or
    duplicate of a record just crossing --slow between the read and the
    claim (microseconds) is told by the kernel and then again by the sweep;
    an skb whose free no probe sees (__kfree_skb, as TCP frees pure ACKs;
    GRO merges) and whose last row is not in ARRIVED_POINTS looks stuck and
    is told slow; a record whose address is reused between the read and the
    index entry's delete loses its index entry (not swept: told at its next
    row only, as without the sweep)."""

    def __init__(self, bpf, slow_ns, arrived, tell):
        self.bpf = bpf
        self.slow_ns = slow_ns
        self.arrived = arrived
        self.tell = tell
        self.period_ns = sweep_period_ns(slow_ns)
        self.due_ns = 0
        self.told = 0               # records told slow by the sweep
        self.sweeps = 0
        self.seconds = 0.0          # the sweeps' time, for the bench

    def tick(self):
        """Sweep if one is due."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if now >= self.due_ns:
            self.due_ns = now + self.period_ns
            self.sweep(now)

    def sweep(self, now_ns=None):
        """Tell the records in flight longer than --slow, once; the index
        entries of those judged are removed (each is read once)."""
        started = time.perf_counter()
        now_ns = now_ns or time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        index = self.bpf[macros.MAP_FLYING]
        for skb, first_ns in entries(index):
            skb, first_ns = _number(skb), _number(first_ns)
            if now_ns - first_ns <= self.slow_ns:
                continue
            key = index.Key(skb)
            self._judge(key, first_ns)
            try:
                del index[key]
            except KeyError:
                pass
        self.sweeps += 1
        self.seconds += time.perf_counter() - started

    def _judge(self, key, first_ns):
        try:
            flight = self.bpf[macros.MAP_FLIGHTS][key]
        except KeyError:
            return                  # evicted: counted forgotten
        if (flight.first_ns != first_ns or flight.freed_ns or flight.troubled
                or not flight.seen):
            return                  # another skb's now, freed, or told by the kernel
        if flight.s[(flight.seen - 1) % SIGHTINGS].probe in self.arrived:
            return
        if not self._claim(key, flight):
            return
        self.told += 1
        for raw in told_rows(flight, key.value):
            self.tell(raw)

    def _claim(self, key, flight):
        """The telling of this record, unless the kernel has it."""
        claims = self.bpf[macros.MAP_SLOW_CLAIMS]
        mine = claims.Leaf()
        mine.first_ns, mine.told = flight.first_ns, flight.seen
        from bcc.libbcc import lib
        if lib.bpf_update_elem(claims.map_fd, ctypes.byref(key), ctypes.byref(mine),
                               BPF_NOEXIST) == 0:
            return True
        try:
            theirs = claims[key]
        except KeyError:
            return False
        if theirs.first_ns == flight.first_ns:
            return False            # the kernel's (or an earlier sweep's)
        claims[key] = mine          # an earlier skb's at this address
        return True
