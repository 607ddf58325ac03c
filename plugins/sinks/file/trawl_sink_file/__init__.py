"""trawl sink writing to a file or stdout: ``[[file-sink]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._sink import FileSink, FileSinkConfig

__all__ = ["FileSink", "FileSinkConfig"]


@trawl.hookimpl
def trawl_register_sinks(register: Callable[[type[trawl.Sink]], None]) -> None:
    register(FileSink)
