"""Sinks: the contract, and the runner that queues, batches, retries and spools for each sink.

Delivery, in short (the user-facing description is in ``docs/influxdb.md``):

- `SinkRunner.submit` puts a batch in a bounded in-memory queue and never blocks.
- One task delivers: it merges queued batches up to ``batch-size`` points (or whatever
  ``flush-interval`` gathered) and calls `Sink.write`.
- A write that fails with a retryable `SinkError` (connection refused, timeout, 5xx, 429)
  puts its batch in the disk spool (`trawl._spool.Spool`), and the runner switches to
  *spooling*: every queued batch moves to the spool, in order, and delivery reads from the
  spool, retrying with exponential backoff and jitter (or after ``Retry-After``). When the
  spool is empty again, delivery goes back to the memory queue. A full memory queue also
  switches to spooling. Batches left in the spool by an earlier run are delivered first.
- A `SinkError` with ``rejected`` set is a partial write: the sink delivered the batch
  except that many lines, which are counted and logged. A non-retryable `SinkError`
  without ``rejected`` rejects the whole batch: the runner halves it until it has found
  the lines that are refused one by one, and delivers the rest.
- Only ``spool-max-size`` drops data (the oldest first), or, with the spool disabled or
  unwritable, the in-memory queue limit.
- `SinkRunner.close` delivers what is queued, or spools it when the sink is down or slow,
  within `CLOSE_DELIVER_SECONDS` + `CLOSE_SPOOL_SECONDS` + `CLOSE_RELEASE_SECONDS`.
"""

from __future__ import annotations

import logging
import random
import re
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import trio

from ._batch import Batch
from ._errors import TrawlError
from ._model import SinkConfig
from ._spool import Spool, SpoolError

log = logging.getLogger("trawl.sinks")

DEFAULT_QUEUE_POINTS = 100_000
DEFAULT_SPOOL_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_SPOOL_ROOT = "trawl-spool"
CLOSE_DELIVER_SECONDS = 5.0
"""On shutdown, how long queued batches may take to reach a working sink."""
CLOSE_SPOOL_SECONDS = 2.0
"""Then, how long writing what is left to the spool may take."""
CLOSE_RELEASE_SECONDS = 1.0
"""Then, how long closing the spool may wait for a spool operation under way."""
REPORT_INTERVAL = 60.0
"""While a sink keeps failing, how often the log says so again."""
MEMORY_SAFETY_FACTOR = 10
"""While spooling, memory is still capped at this many times ``queue-size`` (a disk that
cannot keep up): past it the oldest queued batches are dropped, counted and logged."""


class SinkError(TrawlError):
    """A write failed.

    Args:
      retryable: The same batch may succeed later (connection refused, timeout, 5xx,
        429, or a server-side problem the operator can fix, such as a missing database).
        A non-retryable error without ``rejected`` means the server refused the batch for
        its content (400, 413, 422): the runner then finds the refused lines by halving.
      retry_after: Seconds the server asked us to wait (``Retry-After``).
      rejected: A partial write: the batch was delivered except this many lines, which
        the server refused (InfluxDB's ``partial write: ... dropped=N``).
    """

    def __init__(self, message: str, *, retryable: bool = True,
                 retry_after: float | None = None, rejected: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable and rejected is None
        self.retry_after = retry_after
        self.rejected = rejected


class Sink(ABC):
    """A sink delivers batches somewhere.

    Subclasses set ``kind`` (their TOML section) and ``Config`` (a `SinkConfig` model)
    and implement `write`. trawl calls `open` (again after it raised), then `write` for
    one batch at a time (never concurrently), then `close`. Queueing, batching, retries,
    the disk spool and shutdown are the runner's job. Blocking client calls must run in
    ``trio.to_thread.run_sync``.

    Configuration keys the runner reads from the sink's config when present:
    ``batch_size``, ``flush_interval``, ``queue_size``, ``spool_dir``, ``spool_max_size``,
    ``retry_initial_interval``, ``retry_max_interval``.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[SinkConfig]] = SinkConfig
    default_batch_size: ClassVar[int] = 5000
    default_flush_interval: ClassVar[float] = 1.0

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return str(self.config.name)

    async def open(self) -> None:
        """Prepare (connect, create a database). Raise `SinkError` if it cannot yet."""

    @abstractmethod
    async def write(self, batch: Batch) -> None:
        """Deliver one batch, or raise `SinkError`.

        A sink that can tell that only some lines were refused raises
        ``SinkError(..., rejected=count)`` after the rest was delivered.
        """

    async def close(self) -> None:
        """Release resources; called once after the last write."""


@dataclass
class SinkStats:
    """Delivery figures of one sink, as the operations endpoints publish them."""

    points_written: int = 0
    batches_written: int = 0
    batches_retried: int = 0
    write_errors: int = 0
    lines_rejected: int = 0
    points_dropped: int = 0
    points_spooled: int = 0
    queue_points: int = 0
    spool_points: int = 0
    spool_bytes: int = 0
    last_error: str = ""


def default_spool_dir(name: str) -> Path:
    """``trawl-spool/<sink name>`` under the working directory."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "sink"
    if safe in (".", ".."):
        safe = "sink"
    return Path(DEFAULT_SPOOL_ROOT) / safe


class SinkRunner:
    """Owns one sink: a bounded queue, batching, retries with backoff, the disk spool.

    `submit` never blocks, so a slow sink never slows scraping.
    """

    def __init__(self, sink: Sink, *, queue_points: int = DEFAULT_QUEUE_POINTS) -> None:
        self.sink = sink
        self.stats = SinkStats()
        cfg = sink.config
        self.batch_size = max(1, int(getattr(cfg, "batch_size", sink.default_batch_size)))
        self.flush_interval = float(getattr(cfg, "flush_interval", sink.default_flush_interval))
        self.queue_limit = max(1, int(getattr(cfg, "queue_size", queue_points)))
        self.retry_initial = float(getattr(cfg, "retry_initial_interval", 0.5)) or 0.5
        self.retry_max = max(float(getattr(cfg, "retry_max_interval", 30.0)), self.retry_initial)
        spool_dir = str(getattr(cfg, "spool_dir", "") or default_spool_dir(self.name))
        spool_max = int(getattr(cfg, "spool_max_size", DEFAULT_SPOOL_MAX_BYTES))
        self.spool = Spool(spool_dir, spool_max)
        self._spool_ok = self.spool.enabled
        self._spool_dropped_seen = 0
        self._queue: deque[Batch] = deque()
        self._oldest = 0.0
        self._spooling = False
        self._opened = False
        self._closing = False
        self._inflight: Batch | None = None
        self._backoff = self.retry_initial
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._write_scope: trio.CancelScope | None = None
        self._closed = trio.Event()
        self._last_report = 0.0

    @property
    def name(self) -> str:
        return self.sink.name

    @property
    def spooling(self) -> bool:
        """True while delivery goes through the disk spool."""
        return self._spooling

    # ------------------------------------------------------------------ queueing
    def submit(self, batch: Batch) -> None:
        """Queue a batch for delivery; never blocks."""
        if not batch:
            return
        if not self._queue:
            self._oldest = trio.current_time()
        self._queue.append(batch)
        self.stats.queue_points += len(batch)
        if self.stats.queue_points > self.queue_limit and self._spool_ok:
            self._start_spooling("the memory queue is full")
        limit = self.queue_limit * (MEMORY_SAFETY_FACTOR if self._spool_ok else 1)
        dropped = 0
        while self.stats.queue_points > limit and len(self._queue) > 1:
            old = self._queue.popleft()
            self.stats.queue_points -= len(old)
            dropped += len(old)
        if dropped:
            self.stats.points_dropped += dropped
            log.error("sink %s: memory queue full (%d points)%s: dropped the oldest %d points",
                      self.name, limit, "" if self._spool_ok else " and no spool", dropped)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _start_spooling(self, why: str) -> None:
        if not self._spooling:
            log.warning("sink %s: %s: spooling batches to %s", self.name, why,
                        self.spool.directory)
            self._spooling = True
            self._notify()

    def _take(self) -> Batch:
        first = self._queue.popleft()
        size = len(first)
        if self._queue and size < self.batch_size:
            merged = Batch(first.db, first.rp, list(first.points), list(first.lines))
            while self._queue:
                nxt = self._queue[0]
                if (nxt.db, nxt.rp) != (first.db, first.rp) or size + len(nxt) > self.batch_size:
                    break
                self._queue.popleft()
                merged.points.extend(nxt.points)
                merged.lines.extend(nxt.lines)
                size += len(nxt)
            first = merged
        self.stats.queue_points -= size
        if self._queue:
            self._oldest = trio.current_time()
        return first

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until `close` has finished (or the task is cancelled).

        Reports started at once, before the sink is reachable, so that scraping starts
        (and spools) while the sink is down.
        """
        if self._spool_ok:
            try:
                await trio.to_thread.run_sync(self.spool.open)
            except SpoolError as exc:
                self._spool_failed(exc)
        if len(self.spool):
            self._spooling = True
        self._sync_spool_stats()
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._spooler)
                nursery.start_soon(self._deliverer)
                await self._closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                if self._opened:
                    with trio.move_on_after(5):
                        await self.sink.close()
                await trio.to_thread.run_sync(self.spool.close)

    async def _spooler(self) -> None:
        """While spooling, move every queued batch to the spool, in order."""
        while True:
            changed = self._changed
            if not (self._spooling and self._spool_ok and self._queue):
                await changed.wait()
                continue
            async with self._lock:
                batches = list(self._queue)
                self._queue.clear()
                count = sum(len(b) for b in batches)
                try:
                    await trio.to_thread.run_sync(self.spool.append, batches)
                except SpoolError as exc:
                    self._queue.extendleft(reversed(batches))
                    self._spool_failed(exc)
                else:
                    self.stats.queue_points -= count
                    self.stats.points_spooled += count
                self._sync_spool_stats()
            self._notify()

    async def _deliverer(self) -> None:
        while True:
            if not self._opened:
                await self._open()
                continue
            if self._spooling or len(self.spool):
                await self._deliver_spooled()
                continue
            changed = self._changed
            if not self._queue:
                await changed.wait()
                continue
            deadline = self._oldest + self.flush_interval
            if (not self._closing and self.stats.queue_points < self.batch_size
                    and trio.current_time() < deadline):
                with trio.move_on_at(deadline):
                    await changed.wait()
                continue
            await self._deliver_queued()

    async def _open(self) -> None:
        try:
            await self.sink.open()
        except SinkError as exc:
            if not exc.retryable:
                raise
            self._note_error(exc)
            if self._spool_ok:
                self._start_spooling(f"cannot open: {exc}")
            await self._sleep_backoff(exc)
        else:
            self._opened = True
            self._backoff = self.retry_initial

    async def _deliver_queued(self) -> None:
        """Write one merged batch from memory; on failure spool it (or keep it)."""
        async with self._lock:
            batch = self._inflight = self._take()
            rest, exc = await self._attempt(batch)
            if rest is not None and self._spool_ok:
                try:
                    await trio.to_thread.run_sync(self.spool.append, [rest])
                except SpoolError as err:
                    self._spool_failed(err)
                else:
                    self.stats.points_spooled += len(rest)
                    self._start_spooling(f"write failed: {exc}")
                    rest = None
                self._sync_spool_stats()
            if rest is not None:
                # No spool: keep it at the head of the queue and retry it.
                self._queue.appendleft(rest)
                self.stats.queue_points += len(rest)
            self._inflight = None
        self._notify()
        if exc is not None and not self._closing:
            self.stats.batches_retried += 1
            await self._sleep_backoff(exc)

    async def _deliver_spooled(self) -> None:
        """Write the oldest spooled batches, retrying until they are delivered."""
        async with self._lock:
            try:
                got = await trio.to_thread.run_sync(self.spool.peek, self.batch_size) \
                    if len(self.spool) else None
            except SpoolError as err:
                self._spool_failed(err)
                self.spool.discard()
                self._sync_spool_stats()
                got = None
            if got is None:
                changed = self._changed
                if self._spooling and self._spool_ok and (
                        self.stats.queue_points > self.queue_limit or self._closing):
                    # Still too much in memory: let the spooler move it first.
                    await changed.wait()
                    return
                if self._spooling:
                    log.info("sink %s: spool delivered; back to the memory queue", self.name)
                    self._spooling = False
                self._notify()
                return
        batch, taken = got
        while True:
            rest, exc = await self._attempt(batch)
            if rest is None:
                break
            batch = rest
            self.stats.batches_retried += 1
            await self._sleep_backoff(exc)
        async with self._lock:
            await trio.to_thread.run_sync(self.spool.ack, taken)
            self._sync_spool_stats()
        self._notify()

    async def _attempt(self, batch: Batch) -> tuple[Batch | None, SinkError | None]:
        """One delivery attempt: ``(None, None)`` when done, else what is left and why."""
        with trio.CancelScope() as scope:
            self._write_scope = scope
            try:
                await self.sink.write(batch)
            except SinkError as exc:
                if exc.rejected is not None:
                    self._partial(batch, exc)
                    return None, None
                if not exc.retryable:
                    return await self._bisect(batch, exc)
                self._note_error(exc)
                return batch, exc
            except Exception as unexpected:  # a sink bug must not lose the batch
                log.exception("sink %s: unexpected error in write", self.name)
                err = SinkError(f"unexpected error: {unexpected!r}")
                self._note_error(err)
                return batch, err
            finally:
                self._write_scope = None
        if scope.cancelled_caught:
            abandoned = SinkError("write abandoned: shutdown deadline reached")
            self._note_error(abandoned)
            return batch, abandoned
        self._succeeded(len(batch))
        return None, None

    async def _bisect(self, batch: Batch, exc: SinkError) -> tuple[Batch | None, SinkError | None]:
        lines = list(batch.iter_lines())
        if len(lines) == 1:
            self.stats.lines_rejected += 1
            self._recovered()
            log.error("sink %s: line rejected: %s: %.300s", self.name, exc, lines[0])
            return None, None
        self.stats.batches_retried += 1
        mid = len(lines) // 2
        halves = [lines[:mid], lines[mid:]]
        for i, half in enumerate(halves):
            rest, err = await self._attempt(Batch(batch.db, batch.rp, lines=half))
            if rest is not None:
                left = list(rest.iter_lines()) + [ln for h in halves[i + 1:] for ln in h]
                return Batch(batch.db, batch.rp, lines=left), err
        return None, None

    def _partial(self, batch: Batch, exc: SinkError) -> None:
        rejected = min(max(exc.rejected or 0, 0), len(batch))
        self.stats.lines_rejected += rejected
        self._succeeded(len(batch) - rejected)
        log.error("sink %s: %d of %d lines rejected, the rest written: %s",
                  self.name, rejected, len(batch), exc)

    def _succeeded(self, points: int) -> None:
        self.stats.points_written += points
        self.stats.batches_written += 1
        self._recovered()

    def _recovered(self) -> None:
        self._backoff = self.retry_initial
        if self.stats.last_error:
            log.warning("sink %s recovered", self.name)
            self.stats.last_error = ""

    def _note_error(self, exc: SinkError) -> None:
        self.stats.write_errors += 1
        now = trio.current_time()
        if not self.stats.last_error:
            log.warning("sink %s: write failed: %s (retrying)", self.name, exc)
            self._last_report = now
        elif now - self._last_report >= REPORT_INTERVAL:
            log.warning("sink %s: still failing: %s; %d points spooled, %d queued",
                        self.name, exc, self.spool.points, self.stats.queue_points)
            self._last_report = now
        self.stats.last_error = str(exc)

    def backoff_delay(self, exc: SinkError | None) -> float:
        """The next wait: ``Retry-After`` when given (at most an hour), else a random
        time between half and all of the current interval ("equal jitter"), which
        doubles after each failure up to ``retry-max-interval``."""
        if exc is not None and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), 3600.0)
        return min(self._backoff, self.retry_max) * random.uniform(0.5, 1.0)

    async def _sleep_backoff(self, exc: SinkError | None) -> None:
        delay = self.backoff_delay(exc)
        self._backoff = min(self._backoff * 2, self.retry_max)
        await trio.sleep(delay)

    def _spool_failed(self, exc: SpoolError) -> None:
        log.error("sink %s: %s: batches stay in memory (at most queue-size points)",
                  self.name, exc)
        self._spool_ok = False
        self._spooling = False

    def _sync_spool_stats(self) -> None:
        self.stats.spool_bytes = self.spool.bytes
        self.stats.spool_points = self.spool.points
        new = self.spool.dropped_points - self._spool_dropped_seen
        if new:
            self.stats.points_dropped += new
            self._spool_dropped_seen = self.spool.dropped_points

    # ------------------------------------------------------------------ shutdown
    def _drained(self) -> bool:
        return not self._queue and self._inflight is None

    async def _wait_drained(self) -> None:
        while not self._drained():
            await self._changed.wait()

    async def close(self) -> None:
        """Deliver what is queued, or spool it; returns within 8 s.

        Batches already in the spool stay there for the next run (or the next runner of
        a sink of the same name, after a configuration reload).
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._notify()
        try:
            with trio.move_on_after(CLOSE_DELIVER_SECONDS):
                await self._wait_drained()
            if not self._drained() and self._spool_ok:
                self._start_spooling("shutting down with a slow sink")
                if self._write_scope is not None:
                    self._write_scope.cancel()
                with trio.move_on_after(CLOSE_SPOOL_SECONDS):
                    await self._wait_drained()
            left = self.stats.queue_points + (len(self._inflight) if self._inflight else 0)
            if left:
                log.error("sink %s: shutdown: %d points could be neither delivered nor "
                          "spooled", self.name, left)
            elif self.spool.points:
                log.info("sink %s: %d points wait in the spool %s for the next run",
                         self.name, self.spool.points, self.spool.directory)
        finally:
            # Release the spool (and its lock) now, not when the run task ends, so that a
            # successor with the same spool (a reloaded configuration) can open it at once.
            # The lock is never released: nothing touches this spool again.
            with trio.move_on_after(CLOSE_RELEASE_SECONDS):
                await self._lock.acquire()
                await trio.to_thread.run_sync(self.spool.close)
            self._closed.set()
