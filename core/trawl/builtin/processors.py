"""Built-in processors: ``filter``, ``rename``, ``tags``, ``rate`` and ``aggregate``.

Relabeling (``relabel-configs``, ``metric-relabel-configs``) is configured on the scraper
itself, as in Prometheus; these are the ``[[scraper.processors]]`` kinds.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import hookimpl
from .._processing import Processor
from .._processors import BUILTIN_PROCESSORS


@hookimpl
def trawl_register_processors(register: Callable[[type[Processor]], None]) -> None:
    for cls in BUILTIN_PROCESSORS:
        register(cls)
