"""Discoverers: the contract, a refresh loop for polling discoverers, and the manager."""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import trio

from ._errors import TrawlError
from ._model import DiscovererConfig
from ._targets import Labels, TargetGroup

log = logging.getLogger("trawl.discovery")


@dataclass
class DiscovererHealth:
    """How a discoverer is doing, as the operations endpoints will publish it."""

    refreshes: int = 0
    failures: int = 0
    targets: int = 0
    last_success: float | None = None
    last_error: str = ""
    last_error_time: float | None = None
    failing: bool = False

    def succeeded(self, targets: int) -> None:
        self.refreshes += 1
        self.targets = targets
        self.last_success = time.time()
        self.failing = False

    def failed(self, error: str) -> None:
        self.refreshes += 1
        self.failures += 1
        self.last_error = error
        self.last_error_time = time.time()
        self.failing = True


class GroupSender:
    """Where a discoverer sends its target groups.

    ``await send([group, ...])`` replaces the groups with the same ``source``; an empty
    group removes its source's targets.
    """

    def __init__(self, manager: DiscoveryManager, table: dict[str, TargetGroup]) -> None:
        self._manager = manager
        self._table = table

    async def send(self, groups: Sequence[TargetGroup]) -> None:
        self._manager._apply(self._table, groups)
        await trio.lowlevel.checkpoint()


class Discoverer(ABC):
    """A discoverer asks one authority which targets exist.

    Subclasses set ``kind`` (their TOML section) and ``Config`` (a `DiscovererConfig`
    model) and implement `run`. Blocking client libraries must run in
    ``trio.to_thread.run_sync``; never block the Trio thread.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[DiscovererConfig]] = DiscovererConfig

    def __init__(self, config: Any) -> None:
        self.config = config
        self.health = DiscovererHealth()

    @property
    def name(self) -> str:
        """``<kind>/<id>``, as ``trawl discover`` prints it."""
        return f"{self.kind}/{self.config.id}"

    @abstractmethod
    async def run(
        self, groups: GroupSender, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send target groups until cancelled.

        Call ``task_status.started()`` once the first attempt to reach the authority has
        finished, whether it succeeded or not. When the authority fails, keep the last
        good targets (send nothing), record it with ``self.health.failed(...)``, retry
        with backoff, and recover by yourself.
        """


class PartialRefresh(TrawlError):
    """Raised by `RefreshDiscoverer.refresh` when only part of the authority answered.

    The ``groups`` (with the last good groups of the failed parts) are sent, and the
    error is reported in the discoverer's health.
    """

    def __init__(self, message: str, groups: list[TargetGroup]) -> None:
        super().__init__(message)
        self.groups = groups


class RefreshDiscoverer(Discoverer):
    """A discoverer that polls: implement `refresh` and this class does the rest.

    Every ``refresh-interval`` (the config's ``refresh_interval``, seconds) it calls
    `refresh`, sends the groups that changed and empty groups for sources that vanished.
    A failing refresh keeps the last good targets and is retried with exponential backoff
    from ``min_backoff`` up to the refresh interval. Subclasses that can learn of changes
    sooner override `wait_for_change`.
    """

    min_backoff: ClassVar[float] = 1.0

    @abstractmethod
    async def refresh(self) -> list[TargetGroup]:
        """Return the complete current set of groups; raise on failure."""

    async def wait_for_change(self, deadline: float) -> None:
        """Return at ``deadline``, or earlier when the authority is known to have changed."""
        await trio.sleep_until(deadline)

    @property
    def interval(self) -> float:
        return float(getattr(self.config, "refresh_interval", 60.0))

    async def run(
        self, groups: GroupSender, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            last: dict[str, TargetGroup] = {}
            backoff = self.min_backoff
            started = False
            while True:
                attempt_at = trio.current_time()
                error = ""
                current: list[TargetGroup] | None = None
                try:
                    current = await self.refresh()
                except PartialRefresh as exc:
                    current, error = exc.groups, describe_error(exc)
                except Exception as exc:
                    error = describe_error(exc)
                changed: list[TargetGroup] = []
                if current is not None:
                    changed = diff_groups(last, current)
                    last = {g.source: g for g in current}
                if error:
                    if not self.health.failing:
                        log.warning("discoverer %s failed: %s (keeping the last good targets)",
                                    self.name, error)
                    self.health.failed(error)
                    if current is not None:
                        self.health.targets = sum(len(g.targets) for g in current)
                        wait = self.interval
                    else:
                        wait = min(backoff, self.interval) * random.uniform(0.8, 1.2)
                        backoff = min(backoff * 2, self.interval)
                else:
                    if self.health.failing:
                        log.warning("discoverer %s recovered", self.name)
                    self.health.succeeded(sum(len(g.targets) for g in current or ()))
                    backoff = self.min_backoff
                    wait = self.interval
                if changed:
                    await groups.send(changed)
                if not started:
                    task_status.started()
                    started = True
                await self.wait_for_change(attempt_at + wait)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self.aclose()

    async def aclose(self) -> None:
        """Release what `refresh` holds (clients, connection pools); called once, when
        `run` ends for whatever reason."""


def diff_groups(last: dict[str, TargetGroup], current: list[TargetGroup]) -> list[TargetGroup]:
    """Groups of ``current`` that differ from ``last``, plus empty ones for vanished sources."""
    now = {g.source: g for g in current}
    changed = [g for s, g in now.items() if last.get(s) != g]
    changed.extend(TargetGroup(s) for s in last if s not in now)
    return changed


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 500 else text[:497] + "..."


@dataclass(frozen=True)
class DiscoveredTarget:
    """One target as a discoverer reported it."""

    discoverer: str
    source: str
    labels: Labels


class DiscoveryManager:
    """Runs the discoverers and keeps the merged groups of each.

    Consumers call `snapshot` for a discoverer's current targets and `wait_changed` to
    sleep until something changes. `update` swaps in a new set of discoverers (on reload),
    keeping those whose configuration did not change.
    """

    def __init__(self, discoverers: Sequence[Discoverer]) -> None:
        self.discoverers = {d.name: d for d in discoverers}
        self._groups: dict[str, dict[str, TargetGroup]] = {name: {} for name in self.discoverers}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._version = 0
        self._changed = trio.Event()

    def _apply(self, table: dict[str, TargetGroup], groups: Sequence[TargetGroup]) -> None:
        for g in groups:
            if g.targets:
                table[g.source] = g
            else:
                table.pop(g.source, None)
        self.notify()

    def notify(self) -> None:
        """Wake everyone waiting in `wait_changed`."""
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()

    @property
    def version(self) -> int:
        """Grows by one with every update of any discoverer."""
        return self._version

    async def wait_changed(self, seen_version: int) -> int:
        """Sleep until the version passes ``seen_version``; return the new version."""
        while self._version <= seen_version:
            await self._changed.wait()
        return self._version

    def snapshot(self, name: str) -> list[DiscoveredTarget]:
        """Every target the named discoverer currently reports, group labels applied."""
        out = []
        for source, g in sorted(self._groups.get(name, {}).items()):
            for labels in g.target_labels():
                out.append(DiscoveredTarget(name, source, labels))
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every discoverer; report started once each made its first attempt."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name, discoverer in self.discoverers.items():
                await nursery.start(self._run_one, discoverer, self._groups[name])
            task_status.started()
            await trio.sleep_forever()

    async def update(self, discoverers: Sequence[Discoverer]) -> list[str]:
        """Run exactly ``discoverers``: unchanged ones (same class and configuration) keep
        running with their state; changed ones are replaced once the new one has made its
        first attempt, so their targets never vanish in between. Returns what changed."""
        assert self._nursery is not None, "update() needs a running manager"
        wanted = {d.name: d for d in discoverers}
        changes = []
        for name in list(self.discoverers):
            if name not in wanted:
                self._stop(self.discoverers.pop(name))
                del self._groups[name]
                changes.append(f"stopped {name}")
        for name, new in wanted.items():
            old = self.discoverers.get(name)
            if old is not None and type(old) is type(new) and old.config == new.config:
                continue
            table: dict[str, TargetGroup] = {}
            await self._nursery.start(self._run_one, new, table)
            if old is not None:
                self._stop(old)
            self.discoverers[name] = new
            self._groups[name] = table
            changes.append(f"{'restarted' if old is not None else 'started'} {name}")
        if changes:
            self.notify()
        return changes

    def _stop(self, discoverer: Discoverer) -> None:
        scope = self._scopes.pop(id(discoverer), None)
        if scope is not None:
            scope.cancel()

    async def _run_one(
        self, discoverer: Discoverer, table: dict[str, TargetGroup],
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        name = discoverer.name
        with trio.CancelScope() as scope:
            self._scopes[id(discoverer)] = scope
            try:
                await discoverer.run(GroupSender(self, table), task_status=task_status)
            except Exception as exc:
                # A discoverer that dies keeps its last targets; the rest of trawl goes on.
                log.error("discoverer %s stopped: %s", name, describe_error(exc), exc_info=exc)
                discoverer.health.failed(f"stopped: {describe_error(exc)}")
                try:
                    task_status.started()
                except RuntimeError:
                    pass
                await trio.sleep_forever()
