{%- set c = cookiecutter -%}
{%- if c.kind == "discovery" -%}
"""{{ c.__dist_name }}: the hookimpls, which trawl finds through the entry point."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import {{ c.__class_prefix }}Discoverer, {{ c.__class_prefix }}DiscoveryConfig

__all__ = ["{{ c.__class_prefix }}Discoverer", "{{ c.__class_prefix }}DiscoveryConfig"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register({{ c.__class_prefix }}Discoverer)
{%- elif c.kind == "sink" -%}
"""{{ c.__dist_name }}: the hookimpls, which trawl finds through the entry point."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._sink import {{ c.__class_prefix }}Sink, {{ c.__class_prefix }}SinkConfig

__all__ = ["{{ c.__class_prefix }}Sink", "{{ c.__class_prefix }}SinkConfig"]


@trawl.hookimpl
def trawl_register_sinks(register: Callable[[type[trawl.Sink]], None]) -> None:
    register({{ c.__class_prefix }}Sink)
{%- else -%}
"""{{ c.__dist_name }}: the hookimpls, which trawl finds through the entry point."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._processor import {{ c.__class_prefix }}Processor, {{ c.__class_prefix }}ProcessorConfig

__all__ = ["{{ c.__class_prefix }}Processor", "{{ c.__class_prefix }}ProcessorConfig"]


@trawl.hookimpl
def trawl_register_processors(register: Callable[[type[trawl.Processor]], None]) -> None:
    register({{ c.__class_prefix }}Processor)
{%- endif %}
