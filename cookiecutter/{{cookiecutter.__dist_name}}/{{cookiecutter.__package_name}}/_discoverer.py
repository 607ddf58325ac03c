{%- set c = cookiecutter -%}
"""The discoverer and its configuration.

Replace `refresh` with a call to your authority, and the configuration with its keys.
"""

from __future__ import annotations

from typing import Annotated

import trawl
import trio
from pydantic import Field, field_validator

Port = Annotated[int, Field(ge=1, le=65535)]

PORT_LABEL = "__meta_{{ c.__name_underscored }}_port"
"""The meta label each target carries; relabeling rules can use it. Document yours."""


class {{ c.__class_prefix }}DiscoveryConfig(trawl.DiscovererConfig):
    """A ``[[{{ c.__section }}]]`` section.

    Keys: ``enabled`` and ``id`` (from `trawl.DiscovererConfig`), ``ports``, ``labels``,
    ``refresh-interval``. Unknown keys are errors. Fields are written hyphenated in TOML:
    ``refresh_interval`` is ``refresh-interval``.
    """

    ports: list[Port] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    refresh_interval: trawl.Duration = 30.0

    @field_validator("refresh_interval")
    @classmethod
    def _positive(cls, seconds: float) -> float:
        if seconds <= 0:
            raise ValueError("must be above zero, such as \"30s\"")
        return seconds


class {{ c.__class_prefix }}Discoverer(trawl.RefreshDiscoverer):
    """Reports a loopback target for each configured port, every ``refresh-interval``.

    `trawl.RefreshDiscoverer` does the rest: it calls `refresh` on time, sends only the
    groups that changed, keeps the last good targets when `refresh` raises, retries with
    backoff, and keeps ``self.health`` up to date.
    """

    kind = "{{ c.__section }}"
    Config = {{ c.__class_prefix }}DiscoveryConfig
    config: {{ c.__class_prefix }}DiscoveryConfig

    async def refresh(self) -> list[trawl.TargetGroup]:
        """Return the complete current set of target groups; raise when the authority fails.

        This example reads the targets from the configuration. A real discoverer asks its
        authority here, with an async client (httpx) under a timeout, or with a blocking
        client inside ``trio.to_thread.run_sync``: never block the Trio thread.
        """
        await trio.lowlevel.checkpoint()
        targets = [
            {"__address__": f"127.0.0.1:{port}", PORT_LABEL: str(port)}
            for port in self.config.ports
        ]
        return [trawl.group("{{ c.__name }}", targets, self.config.labels)]
