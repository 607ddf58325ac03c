from __future__ import annotations

import json
import os
import sys
from typing import IO, Literal

import trawl
import trio


class FileSinkConfig(trawl.SinkConfig):
    """``[[file-sink]]``: ``enabled``, ``name``, ``default``, ``path``, ``format``."""

    path: str = "-"
    format: Literal["line-protocol", "jsonl"] = "line-protocol"


class FileSink(trawl.Sink):
    """Appends each batch to ``path`` (``"-"`` is stdout), flushed after every batch."""

    kind = "file-sink"
    Config = FileSinkConfig
    config: FileSinkConfig
    default_flush_interval = 0.2

    def __init__(self, config: FileSinkConfig) -> None:
        super().__init__(config)
        self._file: IO[str] | None = None

    async def open(self) -> None:
        try:
            self._file = await trio.to_thread.run_sync(self._open)
        except OSError as exc:
            raise trawl.SinkError(f"cannot open {self.config.path}: {exc.strerror}") from None

    def _open(self) -> IO[str]:
        if self.config.path == "-":
            return sys.stdout
        parent = os.path.dirname(self.config.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        return open(self.config.path, "a", encoding="utf-8")

    def render(self, batch: trawl.Batch) -> str:
        if self.config.format == "line-protocol":
            return batch.line_protocol()
        lines = [json.dumps(r, separators=(",", ":")) for r in batch.records()]
        lines.extend(json.dumps({"db": batch.db, "rp": batch.rp, "line_protocol": line})
                     for line in batch.lines)
        return "".join(line + "\n" for line in lines)

    async def write(self, batch: trawl.Batch) -> None:
        text = self.render(batch)
        try:
            await trio.to_thread.run_sync(self._write, text)
        except OSError as exc:
            raise trawl.SinkError(f"cannot write {self.config.path}: {exc.strerror}") from None

    def _write(self, text: str) -> None:
        assert self._file is not None
        self._file.write(text)
        self._file.flush()

    async def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            await trio.to_thread.run_sync(self._file.close)
        self._file = None
