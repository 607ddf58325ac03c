"""trawl discoverer for DNS SRV, A and AAAA records: ``[[dns]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import DNSConfig, DNSDiscoverer

__all__ = ["DNSConfig", "DNSDiscoverer"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(DNSDiscoverer)
