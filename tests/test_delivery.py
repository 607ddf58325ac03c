"""The sink runner: retries, backoff, Retry-After, partial writes, the spool, shutdown.

Real in-process sinks (they fail as a server would) in Trio's virtual time. The spool's
disk I/O runs in worker threads, which virtual time cannot see: the clock used here jumps
only after 10 ms of real idleness (`trio.testing.MockClock`'s autojump threshold), so a
thread's work is done before time moves on.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
from trawl import Batch, Duration, Series, Sink, SinkConfig, SinkError, SinkRunner
from trawl._sinks import CLOSE_DELIVER_SECONDS, CLOSE_RELEASE_SECONDS, CLOSE_SPOOL_SECONDS
from trio.testing import MockClock


@pytest.fixture
def clock(mock_clock: MockClock) -> MockClock:
    mock_clock.autojump_threshold = 0.01
    return mock_clock


class RunnerConfig(SinkConfig):
    batch_size: int = 1000
    flush_interval: Duration = 1.0
    queue_size: int = 10_000
    spool_dir: str = ""
    spool_max_size: int = 1 << 20
    retry_initial_interval: Duration = 0.5
    retry_max_interval: Duration = 8.0


class ServerSink(Sink):
    """Behaves as a server that is down until ``up_at`` (virtual time) and may refuse lines."""

    kind = "test-server"
    Config = RunnerConfig

    def __init__(self, config: RunnerConfig, *, up_at: float = 0.0, hang: bool = False,
                 refuse: str = "", retry_after: float | None = None,
                 partial: str = "") -> None:
        super().__init__(config)
        self.up_at, self.hang, self.refuse = up_at, hang, refuse
        self.retry_after, self.partial = retry_after, partial
        self.lines: list[str] = []
        self.attempts: list[float] = []
        self.requests = 0

    async def write(self, batch: Batch) -> None:
        self.requests += 1
        self.attempts.append(trio.current_time())
        await trio.sleep(0.01)
        if self.hang:
            await trio.sleep(math.inf)
        if trio.current_time() < self.up_at:
            raise SinkError("connection refused", retry_after=self.retry_after)
        lines = list(batch.iter_lines())
        if self.refuse and any(self.refuse in line for line in lines):
            raise SinkError("400 bad request: unable to parse", retryable=False)
        if self.partial:
            kept = [ln for ln in lines if self.partial not in ln]
            self.lines.extend(kept)
            if len(kept) < len(lines):
                raise SinkError(f"partial write: dropped={len(lines) - len(kept)}",
                                retryable=False, rejected=len(lines) - len(kept))
            return
        self.lines.extend(lines)


def config(tmp_path: Path, **kw: object) -> RunnerConfig:
    return RunnerConfig.model_validate({"name": "t", "spool_dir": str(tmp_path / "spool"), **kw})


def scrape(i: int, n: int = 10, name: str = "m") -> Batch:
    return Batch("db", "rp", [(Series(name, {"t": str(i)}), float(j), i * 1000 + j)
                              for j in range(n)])


async def produce(runner: SinkRunner, count: int, every: float = 1.0, n: int = 10,
                  name: str = "m") -> list[str]:
    sent = []
    for i in range(count):
        b = scrape(i, n, name)
        sent.extend(b.iter_lines())
        runner.submit(b)
        await trio.sleep(every)
    return sent


async def test_an_outage_loses_nothing_and_keeps_the_order(clock, tmp_path):
    sink = ServerSink(config(tmp_path), up_at=30.0)
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        sent = await produce(runner, 60)
        await trio.sleep(30)
        assert runner.stats.spool_points == 0
        await runner.close()
    assert sink.lines == sent
    st = runner.stats
    assert st.points_written == len(sent)
    assert st.points_spooled >= 250                      # the outage went through the disk
    assert st.batches_retried > 0
    assert st.write_errors > 0
    assert st.points_dropped == 0
    assert st.queue_points == 0
    assert st.last_error == ""
    assert not runner.spooling
    assert list((tmp_path / "spool").glob("*.seg")) == []


async def test_backoff_doubles_with_jitter_up_to_the_maximum(clock, tmp_path):
    sink = ServerSink(config(tmp_path, spool_max_size=0, retry_max_interval=8.0), up_at=60.0)
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit(scrape(0))
        await trio.sleep(70)
        await runner.close()
    gaps = [b - a - 0.01 for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
    bases = [0.5, 1, 2, 4, 8, 8, 8, 8]
    assert len(gaps) >= len(bases)
    for gap, base in zip(gaps, bases, strict=False):
        assert 0.5 * base - 1e-6 <= gap <= base + 1e-6, (gaps, bases)
    assert len(set(round(g, 6) for g in gaps[4:8])) == 4      # jitter, even at the maximum
    assert sink.lines == list(scrape(0).iter_lines())


async def test_retry_after_is_honoured(clock, tmp_path):
    sink = ServerSink(config(tmp_path, spool_max_size=0), up_at=20.0, retry_after=7.0)
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit(scrape(0))
        await trio.sleep(40)
        await runner.close()
    gaps = [round(b - a, 6) for a, b in zip(sink.attempts, sink.attempts[1:], strict=False)]
    assert gaps == [7.01, 7.01, 7.01]
    assert len(sink.lines) == 10


async def test_a_refused_line_loses_only_itself(clock, tmp_path):
    sink = ServerSink(config(tmp_path), refuse="t=13")
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        sent = await produce(runner, 20, every=0.1, n=5)
        bad = [ln for ln in sent if "t=13" in ln]
        bad_line = Batch("db", "rp", lines=["bad,t=13 value=1 1"])
        runner.submit(bad_line)
        await trio.sleep(5)
        await runner.close()
    assert sorted(sink.lines) == sorted(ln for ln in sent if ln not in bad)
    assert runner.stats.lines_rejected == len(bad) + 1
    assert runner.stats.points_written == len(sent) - len(bad)
    assert runner.stats.points_dropped == 0


async def test_a_partial_write_is_counted(clock, tmp_path):
    sink = ServerSink(config(tmp_path), partial="t=3")
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        sent = await produce(runner, 6, every=0.1, n=4)
        await trio.sleep(3)
        await runner.close()
    assert runner.stats.lines_rejected == 4
    assert runner.stats.points_written == len(sent) - 4
    assert sink.requests == 1                  # the server already kept the rest


async def test_a_full_queue_spills_to_disk_and_submit_never_blocks(clock, tmp_path):
    sink = ServerSink(config(tmp_path, queue_size=50), hang=True)
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        for i in range(100):
            start = trio.current_time()
            runner.submit(scrape(i))            # synchronous: cannot block
            assert trio.current_time() == start
            await trio.sleep(0.1)
        await trio.sleep(1)
        assert runner.spooling
        assert runner.stats.spool_points >= 900
        assert runner.stats.queue_points <= 50
        with trio.fail_after(CLOSE_DELIVER_SECONDS + CLOSE_SPOOL_SECONDS + CLOSE_RELEASE_SECONDS):
            await runner.close()
    assert runner.stats.points_dropped == 0
    assert runner.stats.spool_points == 1000   # the hanging batch too, at shutdown


async def test_the_spool_cap_drops_the_oldest(clock, tmp_path):
    sink = ServerSink(config(tmp_path, spool_max_size=3000, retry_max_interval=1.0),
                      up_at=40.0)
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        sent = await produce(runner, 30)
        await trio.sleep(20)
        await runner.close()
    st = runner.stats
    assert st.points_dropped > 0
    assert st.points_written + st.points_dropped == len(sent)
    where = [sent.index(line) for line in sink.lines]
    assert where == sorted(where)                       # in order
    assert sink.lines[-80:] == sent[-80:]             # the newest survived


async def test_shutdown_spools_and_the_next_run_delivers(clock, tmp_path):
    down = ServerSink(config(tmp_path), up_at=math.inf)
    first = SinkRunner(down)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        sent = await produce(first, 5)
        with trio.fail_after(CLOSE_DELIVER_SECONDS + CLOSE_SPOOL_SECONDS + CLOSE_RELEASE_SECONDS):
            await first.close()
    assert first.stats.spool_points == len(sent)
    assert down.lines == []

    up = ServerSink(config(tmp_path))
    second = SinkRunner(up)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert second.spooling
        assert second.stats.spool_points == len(sent)
        later = await produce(second, 2, n=3, name="later")
        await trio.sleep(2)
        await second.close()
    assert up.lines == sent + later
    assert second.stats.spool_points == 0


async def test_shutdown_with_a_hanging_sink_is_bounded(clock, tmp_path):
    sink = ServerSink(config(tmp_path), hang=True)
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        sent = await produce(runner, 3, every=0.5)
        start = trio.current_time()
        await runner.close()
        assert trio.current_time() - start <= (CLOSE_DELIVER_SECONDS + CLOSE_SPOOL_SECONDS
                                              + CLOSE_RELEASE_SECONDS)
    assert runner.stats.spool_points == len(sent)
    assert runner.stats.queue_points == 0


async def test_an_unopenable_sink_does_not_hold_up_the_start(clock, tmp_path):
    class Closed(ServerSink):
        async def open(self) -> None:
            if trio.current_time() < self.up_at:
                raise SinkError("connection refused")

    sink = Closed(config(tmp_path), up_at=10.0)
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert trio.current_time() == 0
        sent = await produce(runner, 15)
        await trio.sleep(5)
        await runner.close()
    assert sink.lines == sent


async def test_a_successor_takes_over_the_spool_at_once(clock, tmp_path):
    """A reloaded configuration replaces a runner: the old one closes (spooling what it
    holds) and the new one, with the same spool, starts while the old task still ends."""
    old = SinkRunner(ServerSink(config(tmp_path), up_at=math.inf))
    up = ServerSink(config(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(old.run)
        sent = await produce(old, 3)
        await old.close()
        new = SinkRunner(up)
        await nursery.start(new.run)
        assert new.spooling
        await trio.sleep(3)
        await new.close()
    assert up.lines == sent


async def test_closing_twice_is_harmless(clock, tmp_path):
    sink = ServerSink(config(tmp_path))
    runner = SinkRunner(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        runner.submit(scrape(0))
        async with trio.open_nursery() as closers:
            closers.start_soon(runner.close)
            closers.start_soon(runner.close)
        await runner.close()
    assert len(sink.lines) == 10
