"""The hooks a trawl plugin implements.

Hooks are synchronous and only *register* classes; the work happens in the classes' async
methods, under Trio. Each hook receives a ``register`` callable: call it once per class.
``register`` raises `trawl.PluginError` when the class's ``kind`` is already taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._discovery import Discoverer
    from ._parsing import Parser
    from ._processing import Processor
    from ._sinks import Sink

hookspec = pluggy.HookspecMarker("trawl")
hookimpl = pluggy.HookimplMarker("trawl")


@hookspec
def trawl_register_discoverers(register: Callable[[type[Discoverer]], None]) -> None:
    """Register discoverer classes, e.g. ``register(ConsulDiscoverer)``.

    Called once when the plugin manager is built. Each class names its ``kind`` (the TOML
    section it owns, such as ``"consul"`` or ``"file-discovery"``) and its ``Config`` model.
    """


@hookspec
def trawl_register_parsers(register: Callable[[type[Parser]], None]) -> None:
    """Register parser classes, e.g. ``register(PrometheusTextParser)``.

    Each class names its ``kind`` and the media types (``content_types``) it reads; a
    scrape picks the parser by the response's ``Content-Type``.
    """


@hookspec
def trawl_register_processors(register: Callable[[type[Processor]], None]) -> None:
    """Register processor classes, e.g. ``register(AddTagProcessor)``.

    Each class names its ``kind`` (used as ``kind = "..."`` in ``[[scraper.processors]]``)
    and its ``Config`` model.
    """


@hookspec
def trawl_register_sinks(register: Callable[[type[Sink]], None]) -> None:
    """Register sink classes, e.g. ``register(InfluxDBSink)``.

    Each class names its ``kind`` (the TOML section it owns, such as ``"influxdb"``) and
    its ``Config`` model.
    """
