"""trawl discoverer for Triton's Container Monitor (CMON): ``[[triton]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import TritonConfig, TritonDiscoverer, discovery_url, response_to_group

__all__ = ["TritonConfig", "TritonDiscoverer", "discovery_url", "response_to_group"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(TritonDiscoverer)
