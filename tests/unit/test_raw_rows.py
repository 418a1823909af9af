"""Text rows made from the raw bytes (textrow.RowFormatter.row_of_raw, the
default per-event path) are the rows of the decoded events, cached or not."""

import random

from skbtracer_lib.events import decode, fields, textrow
from skbtracer_lib.events.textrow import Clock, RowFormatter
from skbtracer_lib.program import probes

PROBES = ["ip_rcv", "kfree_skb", "nf_hook_slow", "ipt_do_table"]


def formatter():
    return RowFormatter(PROBES, probes.drop_reasons(), lambda a: "sym+0x%x" % (a & 0xFFF),
                        Clock(relative=False))


def sample(rng, n):
    base = [decode.encode(kind=k, family=f, l4proto=p, ifname="eth%d" % k, saddr=a, daddr=a,
                          table="filter", chain="INPUT", probe=k, sport=53, dport=9,
                          location=0xFFFFFFFF81000000 * (k == 3), drop_reason=2, verdict=1)
            for k in (1, 2, 3) for p in (6, 17, 1, 58, 250)
            for f, a in ((4, "10.0.0.1"), (6, "fd00::1"))]
    for i in range(n):
        raw = bytearray(rng.choice(base))
        for name in ("ts_ns", "skb", "ip_id"):         # time and skb: every row its own;
            raw[fields.at(name).span] = rng.randbytes(fields.at(name).size)   # ip_id: not shown
        if i % 3 == 0:
            raw[rng.randrange(16, len(raw))] = rng.randrange(256)   # a new key now and then
        yield bytes(raw)


def test_rows_from_raw_bytes_are_the_decoded_rows():
    rng = random.Random(9)
    fmt, plain = formatter(), formatter()
    for raw in sample(rng, 3 * textrow.ROW_CACHE_WINDOW):
        e = decode.Event(raw)
        assert fmt.row_of_raw(raw) == (plain.row(e), e.netns)
    assert fmt._parts                                   # the cache was used


def test_the_cache_steps_aside_when_keys_do_not_repeat():
    rng = random.Random(10)
    fmt, plain = formatter(), formatter()
    for _ in range(textrow.ROW_CACHE_WINDOW + 10):
        raw = decode.encode(sport=rng.randrange(1, 65536), saddr="10.0.0.1", daddr="10.0.0.2")
        assert fmt.row_of_raw(raw)[0] == plain.row(decode.Event(raw))
    assert fmt._uncached > 0
