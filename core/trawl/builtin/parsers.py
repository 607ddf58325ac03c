"""Built-in parsers: OpenMetrics 1.0 text and the Prometheus text format 0.0.4.

OpenMetrics registers first, so the scrape's ``Accept`` header (the parsers'
``accept_header`` values joined in registration order, then ``*/*;q=0.1``) is exactly the
one Prometheus 2.42 sends.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import hookimpl
from .._openmetrics import OpenMetricsParser
from .._parsing import Parser, PrometheusTextParser


@hookimpl
def trawl_register_parsers(register: Callable[[type[Parser]], None]) -> None:
    register(OpenMetricsParser)
    register(PrometheusTextParser)
