"""trawl discoverer for AirBnB Nerve services in ZooKeeper: ``[[nerve]]``.

The ZooKeeper watching is `trawl_discovery_serverset.TreeWatcher`, shared with serverset.
"""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import NerveConfig, NerveDiscoverer, parse_nerve_member

__all__ = ["NerveConfig", "NerveDiscoverer", "parse_nerve_member"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(NerveDiscoverer)
