"""trawl discoverer for Marathon: ``[[marathon]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import MarathonConfig, MarathonDiscoverer, app_to_group

__all__ = ["MarathonConfig", "MarathonDiscoverer", "app_to_group"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(MarathonDiscoverer)
