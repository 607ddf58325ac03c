"""trawl discoverer for a fixed list of targets: ``[[static-discovery]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import StaticDiscoverer, StaticDiscoveryConfig

__all__ = ["StaticDiscoverer", "StaticDiscoveryConfig"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(StaticDiscoverer)
