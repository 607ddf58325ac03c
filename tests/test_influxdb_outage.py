"""Acceptance: nothing scraped is lost while InfluxDB is down (issue 4, point 4).

``trawl run`` subprocesses scrape 20 real local targets every second and write to a real
InfluxDB 1.6.7 and to a ``[[file-sink]]`` fed by the same scraper, the reference.

(a) and (b) share one 60 s outage: trawl A runs through it; trawl B is killed with SIGKILL
in the middle of it and started again. Each writes to its own database.
"""

from __future__ import annotations

import math
import re
import signal
import time
from pathlib import Path

import pytest

from tests.servers import free_port, wait_until
from tests.servers.influxdb import (
    ExpositionTargets,
    InfluxDB,
    Samples,
    TrawlProcess,
    parse_line_protocol,
    reference_config,
)

pytestmark = [pytest.mark.servers, pytest.mark.slow]

OUTAGE_SECONDS = 60.0
TARGETS = 20
SERIES = ExpositionTargets.series_per_target + 5      # plus up, scrape_duration_seconds, ...


def start_trawl(workdir: Path, targets: ExpositionTargets, influx: InfluxDB,
                db: str) -> TrawlProcess:
    port = free_port()
    influx_keys = (f'  urls = ["{influx.url}"]\n  create-database = true\n  timeout = "2s"')
    config = reference_config(workdir, targets, port, influx_keys, db=db, job="outage")
    return TrawlProcess(workdir, config,
                        http_port=port).start()


def metric(proc: TrawlProcess, name: str) -> float:
    return proc.metrics().get(f'trawl_sink_{name}{{sink="influx"}}', math.nan)


def in_window(samples: Samples, start_ms: float, end_ms: float) -> int:
    return sum(1 for pts in samples.values() for ts in pts if start_ms <= ts <= end_ms)


def missing_points(reference: Samples, got: Samples) -> dict[tuple, list[int]]:
    out = {}
    for key, points in reference.items():
        have = got.get(key, {})
        lost = sorted(ts for ts, v in points.items()
                      if ts not in have or not math.isclose(have[ts], v, rel_tol=1e-12))
        if lost:
            out[key] = lost
    return out


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    with ExpositionTargets(tmp_path_factory.mktemp("targets"), TARGETS) as t:
        yield t


@pytest.fixture(scope="module")
def outage(tmp_path_factory, targets):
    """Run the shared outage once; the tests below check what each trawl delivered."""
    root = tmp_path_factory.mktemp("outage")
    influx = InfluxDB(root / "influxdb").start()
    facts: dict[str, object] = {"influx": influx, "root": root}
    started: list[TrawlProcess] = []
    try:
        a = start_trawl(root / "a", targets, influx, "outage_a")
        started.append(a)
        b = start_trawl(root / "b", targets, influx, "outage_b")
        started.append(b)
        for proc in (a, b):
            wait_until(lambda p=proc: metric(p, "points_written_total") > 0, 30,
                       "trawl to write before the outage")
        influx.stop()
        down = time.time()
        wait_until(lambda: metric(a, "spool_bytes") > 0, 20, "trawl A to spool")
        wait_until(lambda: metric(b, "spool_bytes") > 0, 20, "trawl B to spool")
        facts["a_retried"] = metric(a, "batches_retried_total")
        time.sleep(max(0.0, down + OUTAGE_SECONDS / 2 - time.time()))
        b.kill()
        killed = time.time()
        b2 = start_trawl(root / "b", targets, influx, "outage_b")
        started.append(b2)
        facts["b_restart_spool"] = metric(b2, "spool_bytes")
        time.sleep(max(0.0, down + OUTAGE_SECONDS - time.time()))
        facts["a_spool_peak"] = metric(a, "spool_bytes")
        influx.start()
        up = time.time()
        for proc in (a, b2):
            wait_until(lambda p=proc: metric(p, "spool_bytes") == 0
                       and metric(p, "queue_points") < 2000, 90, "the spool to drain")
        time.sleep(2)
        facts["a_metrics"] = a.metrics()
        facts["a_exit"] = a.stop(sig=signal.SIGINT)
        facts["b_exit"] = b2.stop()
        facts["a_log"] = a.log_tail(200)
        facts.update(down=down, killed=killed, up=up)
        yield facts
    finally:
        for proc in started:
            proc.stop()
        influx.stop()


def test_a_an_outage_loses_nothing(outage):
    influx: InfluxDB = outage["influx"]
    root: Path = outage["root"]
    assert outage["a_exit"] == 0, outage["a_log"]
    reference = parse_line_protocol((root / "a" / "ref.lp").read_text())
    got = influx.samples("outage_a")
    assert len(reference) == TARGETS * SERIES
    # The outage really happened while scraping went on: ~60 scrapes of every series
    # (at least half of them, should a loaded machine make scrapes fail).
    during = in_window(reference, outage["down"] * 1000, outage["up"] * 1000)
    assert during >= TARGETS * SERIES * OUTAGE_SECONDS / 2
    lost = missing_points(reference, got)
    assert not lost, f"{len(lost)} series lost points, e.g. {list(lost.items())[:3]}"
    assert set(got) == set(reference)
    assert sum(map(len, got.values())) == sum(map(len, reference.values()))
    # Self-observation: the outage shows in trawl's own metrics.
    m = outage["a_metrics"]
    assert outage["a_spool_peak"] > 0
    assert m['trawl_sink_batches_retried_total{sink="influx"}'] >= outage["a_retried"] > 0
    assert m['trawl_sink_points_dropped_total{sink="influx"}'] == 0
    assert m['trawl_sink_lines_rejected_total{sink="influx"}'] == 0
    assert m['trawl_sink_points_written_total{sink="influx"}'] > 0
    assert m['trawl_sink_spool_bytes{sink="influx"}'] == 0


def test_b_sigkill_during_the_outage_loses_nothing_spooled(outage):
    influx: InfluxDB = outage["influx"]
    root: Path = outage["root"]
    assert outage["b_exit"] == 0
    assert outage["b_restart_spool"] > 0         # the restarted trawl found the spool
    reference = parse_line_protocol((root / "b" / "ref.lp").read_text())
    got = influx.samples("outage_b")
    down_ms, killed_ms, up_ms = (outage[k] * 1000 for k in ("down", "killed", "up"))
    assert in_window(reference, down_ms, killed_ms) >= TARGETS * SERIES * OUTAGE_SECONDS / 4
    assert in_window(reference, killed_ms, up_ms) >= TARGETS * SERIES * OUTAGE_SECONDS / 4
    # Everything the reference file sink got is in InfluxDB, before and after the kill.
    lost = missing_points(reference, got)
    assert not lost, f"{len(lost)} series lost points, e.g. {list(lost.items())[:3]}"
    # InfluxDB may hold a little more than the reference: the file sink buffers up to
    # 0.2 s, the spool less, so SIGKILL can cost the file sink points the spool kept.
    extra = [ts for key, pts in got.items() for ts in pts
             if ts not in reference.get(key, {})]
    assert all(killed_ms - 5000 <= ts <= killed_ms for ts in extra), sorted(extra)[:5]


def test_c_a_rejected_line_loses_only_itself(targets, tmp_path):
    """A field type conflict (the measurement exists with an integer field) rejects only
    that measurement's lines; every other line is written."""
    with InfluxDB(tmp_path / "influxdb") as influx:
        influx.query("CREATE DATABASE conflict")
        assert influx.write("conflict", f"trawl_test_conflict value=1i {int(time.time())}",
                            precision="s") == 204
        proc = start_trawl(tmp_path / "trawl", targets, influx, "conflict")
        try:
            wait_until(lambda: metric(proc, "lines_rejected_total") >= 2 * TARGETS, 60,
                       "lines to be rejected")
            written = metric(proc, "points_written_total")
        finally:
            code = proc.stop()
        assert code == 0, proc.log_tail()
        reference = parse_line_protocol((tmp_path / "trawl" / "ref.lp").read_text())
        got = influx.samples("conflict")
    conflicting = {k: v for k, v in reference.items() if k[0] == "trawl_test_conflict"}
    assert len(conflicting) == TARGETS
    rest = {k: v for k, v in reference.items() if k[0] != "trawl_test_conflict"}
    assert not missing_points(rest, got)
    assert {k for k in got if k[0] == "trawl_test_conflict"} == {("trawl_test_conflict", ())}
    # Counted and logged: every rejection is in the log, and adds up to the lines refused.
    log = (tmp_path / "trawl" / "trawl.log").read_text()
    counts = [int(n) for n in re.findall(r"sink influx: (\d+) of \d+ lines rejected", log)]
    assert sum(counts) == sum(map(len, conflicting.values()))
    assert "field type conflict" in log
    assert written > 0


def test_shutdown_while_influxdb_is_down_spools_and_the_next_run_delivers(targets, tmp_path):
    influx = InfluxDB(tmp_path / "influxdb")          # not started yet: the port is dead
    proc = start_trawl(tmp_path / "trawl", targets, influx, "later")
    try:
        wait_until(lambda: metric(proc, "spool_bytes") > 0, 30, "trawl to spool")
        time.sleep(2)
    finally:
        started = time.monotonic()
        code = proc.stop(sig=signal.SIGTERM)
    assert code == 0, proc.log_tail()
    assert time.monotonic() - started < 12            # Host allows sinks 10 s
    assert list((tmp_path / "trawl" / "spool").glob("*.seg"))
    with influx:
        again = start_trawl(tmp_path / "trawl", targets, influx, "later")
        try:
            wait_until(lambda: metric(again, "spool_bytes") == 0
                       and metric(again, "points_written_total") > 0, 30, "the spool to drain")
            time.sleep(1)
        finally:
            assert again.stop() == 0
        reference = parse_line_protocol((tmp_path / "trawl" / "ref.lp").read_text())
        got = influx.samples("later")
    assert not missing_points(reference, got)
