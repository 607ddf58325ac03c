"""trawl discoverer for Kubernetes: ``[kubernetes]`` / ``[[kubernetes]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._config import KubernetesConfig
from ._discoverer import KubernetesDiscoverer

__all__ = ["KubernetesConfig", "KubernetesDiscoverer"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(KubernetesDiscoverer)
