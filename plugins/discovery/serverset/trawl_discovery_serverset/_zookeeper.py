"""What serverset and nerve discovery share: the configuration and the discoverer loop."""

from __future__ import annotations

import logging
import re
from abc import abstractmethod
from collections.abc import Mapping

import trawl
import trio
from pydantic import Field, field_validator, model_validator

from ._gojson import GoJSONError
from ._treewatcher import Changes, TreeWatcher

log = logging.getLogger("trawl.discovery.zookeeper")

_SERVER = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[^\s,/:\[\]]+)(?::(\d+))?\Z")


class MemberError(ValueError):
    """Member data that does not decode (Prometheus's parse error)."""


class ZooKeeperConfig(trawl.DiscovererConfig):
    """Kapacitor's ``enabled``, ``id`` and ``timeout``, plus ``servers`` and ``paths``."""

    servers: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)
    timeout: trawl.Duration = 10.0

    @field_validator("servers")
    @classmethod
    def _servers(cls, servers: list[str]) -> list[str]:
        for server in servers:
            match = _SERVER.match(server)
            if match is None:
                raise ValueError(f"{server!r} is not a ZooKeeper server: use \"host:port\"")
            if match.group(1) is not None and not 0 < int(match.group(1)) < 65536:
                raise ValueError(f"{server!r}: {match.group(1)} is not a port")
        return servers

    @field_validator("paths")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"paths must begin with '/': {path!r}")
            if path != "/" and (path.endswith("/") or "//" in path):
                raise ValueError(f"{path!r} is not a ZooKeeper node path "
                                 "(no empty parts, no trailing '/')")
        return paths

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, timeout: float) -> float:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        return timeout

    @model_validator(mode="after")
    def _needed_when_enabled(self) -> ZooKeeperConfig:
        # Kapacitor's sample sections carry neither key; they are only needed to run.
        if self.enabled and not self.servers:
            raise ValueError('key "servers": at least one ZooKeeper server is needed')
        if self.enabled and not self.paths:
            raise ValueError('key "paths": at least one path is needed')
        return self


class ZooKeeperDiscoverer(trawl.Discoverer):
    """A discoverer whose members are ZooKeeper nodes, one target per node.

    Subclasses set ``kind`` and ``Config`` and implement `parse_member`. Every node under
    the configured paths (each path's own node included) is a member candidate, as in
    Prometheus: a node with no data is not a member; a node whose data parses is a target
    whose source is the node's path; a node whose data does not parse is reported (log and
    health) and keeps the target it had, if any.
    """

    config: ZooKeeperConfig

    def __init__(self, config: ZooKeeperConfig) -> None:
        super().__init__(config)
        self.watcher = TreeWatcher(config.servers, config.paths, config.timeout)
        self._targets: dict[str, dict[str, str]] = {}
        self._invalid: dict[str, str] = {}
        self._problem = ""

    @abstractmethod
    def parse_member(self, data: bytes, path: str) -> dict[str, str]:
        """The target labels (``__address__`` and ``__meta_*``) of one member node.

        Raises:
          MemberError: the data is not a member of this kind.
        """

    async def run(
        self, groups: trawl.GroupSender, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async def on_update(changes: Changes) -> None:
            changed = self._apply(changes)
            self._report()  # health first: whoever sees the new targets sees their health
            if changed:
                await groups.send(changed)

        await self.watcher.run(on_update, task_status=task_status)

    def _apply(self, changes: Mapping[str, bytes | None]) -> list[trawl.TargetGroup]:
        changed = []
        for path, data in changes.items():
            if data is None or not data.strip():
                # Gone, or a node without data (a directory): not a member.
                self._invalid.pop(path, None)
                if self._targets.pop(path, None) is not None:
                    changed.append(trawl.TargetGroup(path))
                continue
            try:
                # As in Prometheus, a label with an empty value is no label at all.
                labels = {k: v for k, v in self.parse_member(data, path).items() if v}
            except (MemberError, GoJSONError) as exc:
                if self._invalid.get(path) != str(exc):
                    log.warning("discoverer %s: %s%s", self.name, exc,
                                " (keeping its last good target)" if path in self._targets
                                else "")
                self._invalid[path] = str(exc)
                continue
            self._invalid.pop(path, None)
            if self._targets.get(path) != labels:
                self._targets[path] = labels
                changed.append(trawl.group(path, [labels]))
        return changed

    def _report(self) -> None:
        problems = list(self.watcher.problems)
        if self._invalid:
            first = min(self._invalid)
            more = len(self._invalid) - 1
            problems.append(self._invalid[first]
                            + (f" (and {more} more invalid member(s))" if more else ""))
        problem = "; ".join(problems)
        if problem:
            if problem != self._problem:
                log.warning("discoverer %s: %s (keeping the last good targets)", self.name,
                            problem)
            self.health.failed(problem)
            self.health.targets = len(self._targets)
        else:
            if self._problem:
                log.warning("discoverer %s recovered", self.name)
            self.health.succeeded(len(self._targets))
        self._problem = problem


def join_host_port(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: brackets around a host that contains a colon."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
