"""trawl sink writing to InfluxDB 1.x, 2.x and 3.x: ``[[influxdb]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._config import InfluxDBConfig
from ._sink import InfluxDBSink

__all__ = ["InfluxDBConfig", "InfluxDBSink"]


@trawl.hookimpl
def trawl_register_sinks(register: Callable[[type[trawl.Sink]], None]) -> None:
    register(InfluxDBSink)
