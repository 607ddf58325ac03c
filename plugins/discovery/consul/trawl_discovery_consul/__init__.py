"""trawl discoverer for Consul's service catalog: ``[[consul]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import ConsulConfig, ConsulDiscoverer

__all__ = ["ConsulConfig", "ConsulDiscoverer"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(ConsulDiscoverer)
