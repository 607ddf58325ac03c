"""trawl discoverer for Google Compute Engine instances: ``[[gce]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import GCEConfig, GCEDiscoverer

__all__ = ["GCEConfig", "GCEDiscoverer"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(GCEDiscoverer)
