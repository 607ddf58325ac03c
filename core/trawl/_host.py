"""The host: builds discoverers, scrapers and sinks from a configuration and runs them."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence

import trio

from ._batch import Batch
from ._config import Config
from ._discovery import Discoverer, DiscoveryManager
from ._httpserver import Response, serve
from ._plugins import Registry
from ._scrape import ScrapeManager, ScrapePool
from ._selfmetrics import render
from ._sinks import SinkRunner

log = logging.getLogger("trawl")

SHUTDOWN_FLUSH_SECONDS = 10.0


class Host:
    """Everything one configuration runs, under one Trio nursery."""

    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        discoverers: list[Discoverer] = [cls(c) for cls, c in config.enabled_discoverers()]
        self.discovery = DiscoveryManager(discoverers)
        self.sinks: dict[str, SinkRunner] = {
            c.name: SinkRunner(cls(c)) for cls, c in config.enabled_sinks()
        }
        self.pools: list[ScrapePool] = []
        for scraper in config.enabled_scrapers():
            runners = [self.sinks[name] for name in config.sinks_of(scraper)]
            processors = [cls(c) for cls, c in config.processors.get(scraper.name, [])]
            self.pools.append(ScrapePool(
                scraper, registry, _fan_out(runners), processors=processors,
            ))
        self.scrapes = ScrapeManager(self.discovery, self.pools)
        self.ready = trio.Event()

    async def run(self, *, handle_signals: bool = True,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or, with ``handle_signals``, until SIGINT or SIGTERM.

        On the way out, scraping stops first, then every sink flushes what it holds
        (bounded by `SHUTDOWN_FLUSH_SECONDS`).
        """
        async with trio.open_nursery() as sinks_nursery:
            for runner in self.sinks.values():
                await sinks_nursery.start(runner.run)
            try:
                async with trio.open_nursery() as nursery:
                    if handle_signals:
                        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
                    if self.config.http is not None and self.config.http.enabled:
                        await nursery.start(serve, self.config.http.bind_address, self.handle)
                    await nursery.start(self.discovery.run)
                    await nursery.start(self.scrapes.run)
                    self.ready.set()
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    await self._flush()
                sinks_nursery.cancel_scope.cancel()

    async def _flush(self) -> None:
        with trio.move_on_after(SHUTDOWN_FLUSH_SECONDS) as scope:
            async with trio.open_nursery() as nursery:
                for runner in self.sinks.values():
                    nursery.start_soon(runner.close)
        if scope.cancelled_caught:
            left = {n: r.stats.queue_points for n, r in self.sinks.items() if r.stats.queue_points}
            log.error("shutdown: sinks did not flush in time; points left: %s", left)

    async def handle(self, method: str, target: str) -> Response:
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", render(self).encode()
        if path == "/-/healthy":
            return 200, "text/plain", b"trawl is healthy\n"
        if path == "/-/ready":
            if self.ready.is_set():
                return 200, "text/plain", b"trawl is ready\n"
            return 503, "text/plain", b"trawl is starting\n"
        return 404, "text/plain", b"not found\n"


def _fan_out(runners: Sequence[SinkRunner]) -> Callable[[Batch], None]:
    if len(runners) == 1:
        return runners[0].submit

    def submit(batch: Batch) -> None:
        for runner in runners:
            runner.submit(batch)

    return submit


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return
