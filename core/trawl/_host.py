"""The host: builds discoverers, scrapers and sinks from a configuration and runs them."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from ._api import Api
from ._batch import Batch
from ._config import Config, ScraperConfig
from ._discovery import Discoverer, DiscoveryManager
from ._errors import ConfigError
from ._formats import MAPPERS
from ._httpserver import serve, tls_server_context
from ._plugins import Registry
from ._relabel import relabeler
from ._scrape import ScrapeManager, ScrapePool
from ._sinks import SinkRunner

log = logging.getLogger("trawl")

SHUTDOWN_FLUSH_SECONDS = 10.0


class Host:
    """Everything one configuration runs, under one Trio nursery.

    Args:
      config: The validated configuration to run.
      registry: The installed plugins.
      source: Reads the configuration again, for `reload` (``None``: reload is refused).
    """

    def __init__(self, config: Config, registry: Registry,
                 source: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.registry = registry
        self.source = source
        discoverers: list[Discoverer] = [cls(c) for cls, c in config.enabled_discoverers()]
        self.discovery = DiscoveryManager(discoverers)
        self.sinks: dict[str, SinkRunner] = {
            c.name: SinkRunner(cls(c)) for cls, c in config.enabled_sinks()
        }
        self.pools: list[ScrapePool] = [self._make_pool(s) for s in config.enabled_scrapers()]
        self.scrapes = ScrapeManager(self.discovery, self.pools)
        self.ready = trio.Event()
        self.reloads = 0
        self.reload_failures = 0
        self._reload_lock = trio.Lock()
        self._sinks_nursery: trio.Nursery | None = None

    def _make_pool(self, scraper: ScraperConfig) -> ScrapePool:
        config, registry = self.config, self.registry
        processors = [cls(c) for cls, c in config.processors.get(scraper.name, [])]
        return ScrapePool(
            scraper, registry, self._deliver_to(config.sinks_of(scraper)), processors=processors,
            relabel=relabeler(scraper.relabel_configs),
            metric_relabel=relabeler(scraper.metric_relabel_configs),
            mapper=MAPPERS[scraper.format],
        )

    def _deliver_to(self, names: Sequence[str]) -> Callable[[Batch], None]:
        """Hand batches to the named sinks, whichever runner holds each name now."""
        sinks = self.sinks
        if len(names) == 1:
            (name,) = names

            def submit_one(batch: Batch) -> None:
                sinks[name].submit(batch)

            return submit_one

        def submit(batch: Batch) -> None:
            for n in names:
                sinks[n].submit(batch)

        return submit

    def _pool_key(self, config: Config, scraper: ScraperConfig) -> tuple[Any, ...]:
        return scraper, config.processors.get(scraper.name, []), config.sinks_of(scraper)

    async def run(self, *, handle_signals: bool = True,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or, with ``handle_signals``, until SIGINT or SIGTERM.

        SIGHUP reloads the configuration. On the way out, scraping stops first, then every
        sink delivers (or spools) what it holds, bounded by `SHUTDOWN_FLUSH_SECONDS`.
        """
        # The sinks run shielded: whoever cancels the host, they deliver or spool what
        # they hold before they stop.
        sinks_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as outer:
            await outer.start(self._run_sinks, sinks_scope)
            try:
                async with trio.open_nursery() as nursery:
                    if handle_signals:
                        await nursery.start(self._signals, nursery.cancel_scope)
                    http = self.config.http
                    if http is not None and http.enabled:
                        context = None
                        if http.https_enabled:
                            context = tls_server_context(http.https_certificate,
                                                         http.https_private_key)
                        await nursery.start(partial(serve, http.bind_address, Api(self),
                                                    ssl_context=context))
                    await nursery.start(self.discovery.run)
                    await nursery.start(self.scrapes.run)
                    if self.source is not None:
                        nursery.start_soon(self._watch_config)
                    self.ready.set()
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    await self._flush(list(self.sinks.values()))
                sinks_scope.cancel()

    async def _run_sinks(self, scope: trio.CancelScope, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                self._sinks_nursery = nursery
                for runner in self.sinks.values():
                    await nursery.start(runner.run)
                task_status.started()
                await trio.sleep_forever()

    async def _flush(self, runners: list[SinkRunner]) -> None:
        with trio.move_on_after(SHUTDOWN_FLUSH_SECONDS) as scope:
            async with trio.open_nursery() as nursery:
                for runner in runners:
                    nursery.start_soon(runner.close)
        if scope.cancelled_caught:
            left = {r.name: r.stats.queue_points for r in runners if r.stats.queue_points}
            log.error("shutdown: sinks did not flush in time; points left: %s", left)

    async def reload(self) -> list[str]:
        """Read the configuration again and apply what changed.

        Returns:
          The problems of an invalid configuration (which is then not applied: the running
          one stays), or an empty list.
        """
        async with self._reload_lock:
            if self.source is None:
                log.warning("reload refused: this trawl has no configuration to read again")
                return ["this trawl has no configuration to read again"]
            try:
                config = await trio.to_thread.run_sync(self.source)
            except ConfigError as exc:
                self.reload_failures += 1
                for problem in exc.problems:
                    log.error("reload rejected: %s", problem)
                return exc.problems
            changes = await self._apply(config)
            self.reloads += 1
            log.info("configuration reloaded: %s", "; ".join(changes) or "nothing changed")
            return []

    async def _apply(self, new: Config) -> list[str]:
        old = self.config
        changes: list[str] = []
        assert self._sinks_nursery is not None
        # Sinks: an unchanged sink keeps its runner (queue, spool, connections). A changed
        # or removed one delivers or spools what it holds before its successor starts.
        wanted = {c.name: (cls, c) for cls, c in new.enabled_sinks()}
        for name, runner in list(self.sinks.items()):
            cls_config = wanted.get(name)
            if cls_config is not None and type(runner.sink) is cls_config[0] \
                    and runner.sink.config == cls_config[1]:
                continue
            if cls_config is None:
                del self.sinks[name]
                changes.append(f"removed sink {name}")
            else:
                self.sinks[name] = SinkRunner(cls_config[0](cls_config[1]))
                changes.append(f"restarted sink {name}")
            await self._flush([runner])
            if cls_config is not None:
                await self._sinks_nursery.start(self.sinks[name].run)
        for name, (cls, c) in wanted.items():
            if name not in self.sinks:
                self.sinks[name] = SinkRunner(cls(c))
                await self._sinks_nursery.start(self.sinks[name].run)
                changes.append(f"started sink {name}")
        # Discoverers: unchanged ones keep their state.
        changes += await self.discovery.update(
            [cls(c) for cls, c in new.enabled_discoverers()])
        # Scrapers: an unchanged scraper keeps its pool, so its targets keep their rhythm
        # and their scrape cache.
        self.config = new
        current = {p.scraper.name: p for p in self.pools}
        pools: list[ScrapePool] = []
        stopped: list[ScrapePool] = []
        for scraper in new.enabled_scrapers():
            pool = current.pop(scraper.name, None)
            if pool is not None and \
                    self._pool_key(old, pool.scraper) == self._pool_key(new, scraper):
                pools.append(pool)
                continue
            pools.append(self._make_pool(scraper))
            if pool is None:
                changes.append(f"started scraper {scraper.name}")
            else:
                stopped.append(pool)
                changes.append(f"restarted scraper {scraper.name}")
        for name, pool in current.items():
            stopped.append(pool)
            changes.append(f"stopped scraper {name}")
        self.scrapes.replace_pools(pools, stopped)
        self.pools = pools
        return changes

    async def _signals(self, scope: trio.CancelScope, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP: reloading the configuration")
                    await self.reload()
                    continue
                log.info("received %s: stopping", signal.Signals(signum).name)
                scope.cancel()
                return

    async def _watch_config(self) -> None:
        """Reload when the configuration file changes, while ``[reload] watch = true``."""

        def stamp() -> tuple[int, int] | None:
            try:
                st = os.stat(self.config.path)
            except OSError:
                return None
            return st.st_mtime_ns, st.st_size

        seen = await trio.to_thread.run_sync(stamp)
        while True:
            await trio.sleep(self.config.reload.interval)
            now = await trio.to_thread.run_sync(stamp)
            if now is None or now == seen:
                continue
            seen = now
            if self.config.reload.watch:
                log.info("%s changed: reloading the configuration", self.config.path)
                await self.reload()
