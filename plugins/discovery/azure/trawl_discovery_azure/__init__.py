"""trawl discoverer for Azure virtual machines and scale-set VMs: ``[[azure]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import AzureConfig, AzureDiscoverer

__all__ = ["AzureConfig", "AzureDiscoverer"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(AzureDiscoverer)
