"""Sinks: the contract, and the runner that queues, batches and retries for each sink."""

from __future__ import annotations

import logging
import random
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from ._batch import Batch
from ._errors import TrawlError
from ._model import SinkConfig

log = logging.getLogger("trawl.sinks")


class SinkError(TrawlError):
    """A write failed.

    Args:
      retryable: The same batch may succeed later (connection refused, timeout, 5xx,
        429). A non-retryable batch is dropped, counted and logged.
      retry_after: Seconds the server asked us to wait (``Retry-After``).
    """

    def __init__(self, message: str, *, retryable: bool = True,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Sink(ABC):
    """A sink delivers batches somewhere.

    Subclasses set ``kind`` (their TOML section) and ``Config`` (a `SinkConfig` model)
    and implement `write`. trawl calls `open` once, then `write` for one batch at a time
    (never concurrently), then `close`. Queueing, batching, retries and shutdown are the
    host's job. Blocking client calls must run in ``trio.to_thread.run_sync``.
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

        A sink that can tell which lines were rejected drops only those (counting them in
        ``stats.lines_rejected``) and returns normally for the rest.
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
    queue_points: int = 0
    spool_bytes: int = 0
    last_error: str = ""


class SinkRunner:
    """Owns one sink: a bounded queue, batching, retries with backoff, a bounded flush.

    `submit` never blocks, so a slow sink never slows scraping.
    """

    max_backoff: ClassVar[float] = 30.0

    def __init__(self, sink: Sink, *, queue_points: int = 500_000) -> None:
        self.sink = sink
        self.stats = SinkStats()
        cfg = sink.config
        self.batch_size = int(getattr(cfg, "batch_size", sink.default_batch_size))
        self.flush_interval = float(getattr(cfg, "flush_interval", sink.default_flush_interval))
        self.queue_limit = int(getattr(cfg, "queue_size", queue_points))
        self._queue: deque[Batch] = deque()
        self._oldest = 0.0
        self._wakeup = trio.Event()
        self._closing = False
        self._idle = trio.Event()
        self._idle.set()

    @property
    def name(self) -> str:
        return self.sink.name

    def submit(self, batch: Batch) -> None:
        """Queue a batch for delivery; drops the oldest batch when the queue is full."""
        if not batch:
            return
        if not self._queue:
            self._oldest = trio.current_time()
        self._queue.append(batch)
        self.stats.queue_points += len(batch)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        while self.stats.queue_points > self.queue_limit and len(self._queue) > 1:
            dropped = self._queue.popleft()
            self.stats.queue_points -= len(dropped)
            self.stats.points_dropped += len(dropped)
            log.warning("sink %s: queue full, dropped %d points", self.name, len(dropped))
        self._wakeup.set()

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

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver queued batches until `close` is called and the queue is empty."""
        await self._open()
        task_status.started()
        try:
            while True:
                if not self._queue:
                    self._idle.set()
                    if self._closing:
                        return
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                deadline = self._oldest + self.flush_interval
                while (not self._closing and self.stats.queue_points < self.batch_size
                       and trio.current_time() < deadline):
                    self._wakeup = trio.Event()
                    with trio.move_on_at(deadline):
                        await self._wakeup.wait()
                await self._deliver(self._take())
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.sink.close()

    async def _open(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self.sink.open()
                return
            except SinkError as exc:
                if not exc.retryable:
                    raise
                self._note_error(exc)
                await trio.sleep(self._backoff(backoff, exc))
                backoff = min(backoff * 2, self.max_backoff)

    async def _deliver(self, batch: Batch) -> None:
        backoff = 0.5
        while True:
            try:
                await self.sink.write(batch)
            except SinkError as exc:
                self._note_error(exc)
                if not exc.retryable:
                    self.stats.points_dropped += len(batch)
                    log.error("sink %s: dropped %d points: %s", self.name, len(batch), exc)
                    return
                self.stats.batches_retried += 1
                await trio.sleep(self._backoff(backoff, exc))
                backoff = min(backoff * 2, self.max_backoff)
            else:
                if self.stats.last_error:
                    log.warning("sink %s recovered", self.name)
                    self.stats.last_error = ""
                self.stats.points_written += len(batch)
                self.stats.batches_written += 1
                return

    def _note_error(self, exc: SinkError) -> None:
        self.stats.write_errors += 1
        if not self.stats.last_error:
            log.warning("sink %s: write failed: %s (retrying)", self.name, exc)
        self.stats.last_error = str(exc)

    def _backoff(self, backoff: float, exc: SinkError) -> float:
        if exc.retry_after is not None:
            return max(exc.retry_after, 0.0)
        return backoff * random.uniform(0.5, 1.5)

    async def close(self) -> None:
        """Stop waiting for full batches and deliver what is queued."""
        self._closing = True
        self._wakeup.set()
        await self._idle.wait()
