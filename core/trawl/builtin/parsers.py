"""Built-in parsers: the Prometheus text format."""

from __future__ import annotations

from collections.abc import Callable

from .. import hookimpl
from .._parsing import Parser, PrometheusTextParser


@hookimpl
def trawl_register_parsers(register: Callable[[type[Parser]], None]) -> None:
    register(PrometheusTextParser)
