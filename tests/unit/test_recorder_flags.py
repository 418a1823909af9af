"""--on-trouble, --slow and --recorder-size: validation through the real
command line (one line, exit 2), the values as they reach the C text, and
the recorder's summary line (program/recorder.py)."""

import pytest

from skbt_unit_helpers import assert_usage_error, run_cli
from skbtracer_lib import config
from skbtracer_lib.program import recorder

BAD_ARGS = [
    ("slow-without-on-trouble", ["--slow", "100ms"], "--slow"),
    ("size-without-on-trouble", ["--recorder-size", "64"], "--recorder-size"),
    ("slow-word", ["--on-trouble", "--slow", "fast"], "--slow"),
    ("slow-zero", ["--on-trouble", "--slow", "0"], "--slow"),
    ("slow-negative", ["--on-trouble", "--slow", "-5ms"], "--slow"),
    ("slow-unit", ["--on-trouble", "--slow", "5ns"], "--slow"),
    ("slow-too-long", ["--on-trouble", "--slow", "2h"], "--slow"),
    ("slow-too-short", ["--on-trouble", "--slow", "0.1us"], "--slow"),
    ("size-zero", ["--on-trouble", "--recorder-size", "0"], "--recorder-size"),
    ("size-too-small", ["--on-trouble", "--recorder-size", "15"], "--recorder-size"),
    ("size-too-big", ["--on-trouble", "--recorder-size", "65537"], "--recorder-size"),
    ("size-word", ["--on-trouble", "--recorder-size", "lots"], "--recorder-size"),
    ("size-suffix", ["--on-trouble", "--recorder-size", "4k"], "--recorder-size"),
    ("with-iptable", ["--on-trouble", "--iptable"], "--iptable"),
    ("with-why", ["--on-trouble", "--why"], "--why"),
    ("with-keep", ["--on-trouble", "--keep"], "--keep"),
    ("with-callstack", ["--on-trouble", "--callstack"], "--callstack"),
    ("with-write", ["--on-trouble", "-w", "/tmp/skbt-never.pcapng"], "-w"),
    ("with-read", ["-r", "/dev/null", "--on-trouble"], "--on-trouble"),
]


@pytest.mark.parametrize("argv, mention", [(a, m) for _i, a, m in BAD_ARGS],
                         ids=[i for i, _a, _m in BAD_ARGS])
def test_bad_recorder_flag_is_one_line_and_exit_2(argv, mention):
    assert_usage_error(run_cli(*argv, timeout=30), mention)


def parse(*argv):
    return config.parse_args(list(argv))


@pytest.mark.parametrize("text, ns", [("100ms", 10**8), ("2s", 2 * 10**9), ("2", 2 * 10**9),
                                      ("500us", 500_000), ("1.5m", 90 * 10**9),
                                      (" 0.25ms ", 250_000), ("1h", None)])
def test_slow_durations(text, ns):
    if ns is None:      # minutes and seconds only: an hour is written 60m
        with pytest.raises(SystemExit):
            parse("--on-trouble", "--slow", text)
        return
    assert parse("--on-trouble", "--slow", text).slow_ns == ns


def test_on_trouble_records_route_and_drop_rows():
    cfg = parse("--on-trouble")
    assert cfg.on_trouble and cfg.modes == {"route", "drop"}
    assert cfg.recorder_size == recorder.DEFAULT_ENTRIES and cfg.slow_ns is None
    assert parse("--on-trouble", "--recorder-size", "16").recorder_size == 16
    assert parse("--on-trouble", "--dropstack").stacks == "drops"
    assert not parse().on_trouble


def test_defines_reach_the_c():
    cfg = parse("--on-trouble", "--slow", "100ms", "--recorder-size", "512")

    class P:
        def __init__(self, id, name, extra=False):
            self.id, self.name, self.extra = id, name, extra

    probes = [P(0, "netif_rx"), P(1, "net_dev_queue"), P(2, "ip_rcv", extra=True),
              P(3, "consume_skb"), P(4, "skb_copy_datagram_iovec"), P(5, "kfree_skb")]
    d = recorder.defines(cfg, probes)
    assert d["RECORDER_ENTRIES"] == 512 and d["RECORDER_SLOW_NS"] == "100000000ULL"
    assert d["RECORDER_PLACE(p)"] == "((p) == 0)"
    assert d["RECORDER_UNTIMED(p)"] == "((p) == 3 || (p) == 4)"
    assert d["RECORDER_SIGHTINGS"] & (d["RECORDER_SIGHTINGS"] - 1) == 0
    names = [d["RECORDER_COUNT_" + c.upper()] for c in recorder.COUNTERS]
    assert sorted(names) == list(range(d["RECORDER_COUNTS"]))
    assert "RECORDER_SLOW_NS" not in recorder.defines(parse("--on-trouble"), probes)


def test_ebpf_shows_the_recorder():
    out = run_cli("--ebpf", "--on-trouble", "--slow", "1s", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "#define RECORDER 1" in out.stdout and "#define RECORDER_SLOW_NS" in out.stdout


def test_summary_line():
    counts = {"started": 9, "ended": 4, "drops": 2, "duplicates": 1, "slow": 0, "forgotten": 3,
              "places_forgotten": 7}
    assert recorder.summary(counts) == ("3 troubles told (2 drops, 1 duplicates, 0 slow), "
                                        "3 skbs forgotten, 7 places forgotten")
    before = dict(counts, drops=1, forgotten=1, places_forgotten=2)
    assert recorder.summary(counts, before) == (
        "3 troubles told (+1) (2 drops, 1 duplicates, 0 slow), 3 skbs forgotten (+2), "
        "7 places forgotten (+5)")
    assert recorder.memory_bytes(2) == 2 * (recorder.FLIGHT_HEAD_BYTES
                                            + recorder.SIGHTINGS * recorder.SIGHTING_BYTES)
