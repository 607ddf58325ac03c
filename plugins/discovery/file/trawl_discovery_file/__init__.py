"""trawl discoverer for Prometheus file_sd files: ``[[file-discovery]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import FileDiscoverer, FileDiscoveryConfig

__all__ = ["FileDiscoverer", "FileDiscoveryConfig"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(FileDiscoverer)
