"""--on-trouble, the flight recorder (skbtracer.c's RECORDER): what the C is
told, and what its counters say.

The kernel keeps each wanted skb's last SIGHTINGS rows in an LRU hash of
--recorder-size skbs and sends them only on trouble (a drop, a duplicate,
--slow). An skb whose record the LRU evicted while it was in flight is
forgotten; the C cannot see an eviction, so it counts records started and
ended, and the records still in flight are counted here:
forgotten = started - ended - in flight."""

from . import macros
from ..story.points import FREE_POINTS, JOIN_WINDOW_NS, RX_POINTS, SOCKET_POINTS

SIGHTINGS = 32                  # rows kept per skb (a power of two)
DEFAULT_ENTRIES = 4096
MIN_ENTRIES, MAX_ENTRIES = 16, 65536
# struct sighting and the head of struct flight, in bytes (skbtracer.c)
SIGHTING_BYTES, FLIGHT_HEAD_BYTES = 112, 48
# recorder_counts' slots, in this order; TROUBLES: the ones told at exit
COUNTERS = ("started", "ended", "drops", "duplicates", "slow")
TROUBLES = ("drops", "duplicates", "slow")
MIN_SLOW_NS, MAX_SLOW_NS = 1_000, 3600 * 10**9
SLOW_UNITS = {"us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "": 10**9}


def memory_bytes(entries):
    """The records' kernel memory for --recorder-size entries."""
    return entries * (FLIGHT_HEAD_BYTES + SIGHTINGS * SIGHTING_BYTES)


def defines(cfg, probes):
    """The C's #defines for --on-trouble; probes: the plan's (id, name, extra)."""
    places = [p.id for p in probes if p.name in RX_POINTS and not p.extra]
    # --slow times the way to a socket: not the wait in its queue for the reader
    untimed = [p.id for p in probes if p.name in FREE_POINTS | set(SOCKET_POINTS)
               and not p.extra]
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

    def __init__(self, bpf):
        self.bpf = bpf

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
        return counts


def summary(counts, previous=None):
    """'T troubles told (d drops, u duplicates, s slow), N skbs forgotten';
    with previous counts, each total's growth since then too."""
    def since(name):
        return " (+%d)" % (counts[name] - previous[name]) if previous else ""
    told = sum(counts[t] for t in TROUBLES)
    told_before = sum(previous[t] for t in TROUBLES) if previous else 0
    kinds = ", ".join("%d %s" % (counts[t], t) for t in TROUBLES)
    return "%d troubles told%s (%s), %d skbs forgotten%s" % (
        told, " (+%d)" % (told - told_before) if previous else "", kinds,
        counts["forgotten"], since("forgotten"))
