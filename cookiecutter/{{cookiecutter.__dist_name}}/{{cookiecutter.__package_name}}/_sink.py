{%- set c = cookiecutter -%}
"""The sink and its configuration.

Replace `write` with a call to your destination, and the configuration with its keys.
"""

from __future__ import annotations

import re

import trawl
import trio
from pydantic import field_validator


class {{ c.__class_prefix }}SinkConfig(trawl.SinkConfig):
    """A ``[[{{ c.__section }}]]`` section.

    Keys: ``enabled``, ``name`` and ``default`` (from `trawl.SinkConfig`), ``directory``.
    Unknown keys are errors.
    """

    directory: str

    @field_validator("directory")
    @classmethod
    def _not_empty(cls, directory: str) -> str:
        if not directory:
            raise ValueError("must name a directory")
        return directory


class {{ c.__class_prefix }}Sink(trawl.Sink):
    """Appends each batch, as line protocol, to ``<directory>/<db>.lp``.

    The host calls `open`, then `write` one batch at a time, then `close`. Queueing,
    batching, retries and the disk spool are the host's job: `write` only delivers, or
    raises `trawl.SinkError`.
    """

    kind = "{{ c.__section }}"
    Config = {{ c.__class_prefix }}SinkConfig
    config: {{ c.__class_prefix }}SinkConfig

    async def open(self) -> None:
        directory = trio.Path(self.config.directory)
        try:
            await directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise trawl.SinkError(f"cannot create {directory}: {exc.strerror}") from None

    async def write(self, batch: trawl.Batch) -> None:
        """Deliver one batch. File I/O runs in a worker thread (``trio.open_file``)."""
        path = trio.Path(self.config.directory) / (re.sub(r"[^\w.-]", "_", batch.db) + ".lp")
        try:
            async with await trio.open_file(path, "a", encoding="utf-8") as f:
                await f.write(batch.line_protocol())
        except OSError as exc:
            # retryable: the same batch may succeed once the disk has room again.
            raise trawl.SinkError(f"cannot write {path}: {exc.strerror}", retryable=True) from None
