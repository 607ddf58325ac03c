"""trawl: Prometheus-style discovery and scraping into InfluxDB, every part a plugin.

Everything a plugin author needs is importable from here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._batch import Batch, Point, Series
from ._config import Config, HttpConfig, ScraperConfig, load_config, parse_config
from ._discovery import (
    DiscoveredTarget,
    Discoverer,
    DiscovererHealth,
    DiscoveryManager,
    GroupSender,
    PartialRefresh,
    RefreshDiscoverer,
)
from ._duration import format_duration, parse_duration
from ._errors import ConfigError, PluginError, TrawlError
from ._host import Host
from ._model import (
    ByteSize,
    DiscovererConfig,
    Duration,
    ProcessorConfig,
    SectionModel,
    SinkConfig,
    parse_byte_size,
)
from ._openmetrics import OpenMetricsParser
from ._parsing import ParseError, Parser, PrometheusTextParser, Scraped, format_value
from ._plugins import (
    KNOWN_SECTIONS,
    Registry,
    collect,
    get_plugin_manager,
    list_plugins,
)
from ._processing import Processor
from ._sinks import Sink, SinkError, SinkRunner, SinkStats
from ._targets import TargetGroup, group
from ._tls import error_reason, tls_context
from .hookspecs import hookimpl, hookspec

__all__ = [
    "KNOWN_SECTIONS",
    "Batch",
    "ByteSize",
    "Config",
    "ConfigError",
    "DiscoveredTarget",
    "Discoverer",
    "DiscovererConfig",
    "DiscovererHealth",
    "DiscoveryManager",
    "Duration",
    "GroupSender",
    "Host",
    "HttpConfig",
    "OpenMetricsParser",
    "ParseError",
    "Parser",
    "PartialRefresh",
    "PluginError",
    "Point",
    "Processor",
    "ProcessorConfig",
    "PrometheusTextParser",
    "RefreshDiscoverer",
    "Registry",
    "Scraped",
    "ScraperConfig",
    "SectionModel",
    "Series",
    "Sink",
    "SinkConfig",
    "SinkError",
    "SinkRunner",
    "SinkStats",
    "TargetGroup",
    "TrawlError",
    "__version__",
    "collect",
    "error_reason",
    "format_duration",
    "format_value",
    "get_plugin_manager",
    "group",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "load_config",
    "parse_byte_size",
    "parse_config",
    "parse_duration",
    "tls_context",
]
