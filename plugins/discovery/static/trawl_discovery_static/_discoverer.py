from __future__ import annotations

import math

import trawl
import trio
from pydantic import Field, field_validator


class StaticDiscoveryConfig(trawl.DiscovererConfig):
    """``[[static-discovery]]``: Kapacitor's keys ``enabled``, ``id``, ``targets``, ``labels``."""

    targets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("targets")
    @classmethod
    def _addresses(cls, targets: list[str]) -> list[str]:
        for t in targets:
            if not t or "/" in t or any(c.isspace() for c in t):
                raise ValueError(f"{t!r} is not a host:port address")
        return targets


class StaticDiscoverer(trawl.Discoverer):
    """Reports its configured targets once, as one group with source ``"0"``."""

    kind = "static-discovery"
    Config = StaticDiscoveryConfig
    config: StaticDiscoveryConfig

    async def run(
        self, groups: trawl.GroupSender, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        targets = [{"__address__": t} for t in self.config.targets]
        await groups.send([trawl.group("0", targets, self.config.labels)])
        self.health.succeeded(len(targets))
        task_status.started()
        await trio.sleep(math.inf)
