"""Parsers: the parser contract and the Prometheus text format (0.0.4)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from ._errors import TrawlError

RawSample = tuple[str, float, "int | None"]
"""``(series text as it appeared, value, timestamp in ms or None)``."""


class ParseError(TrawlError):
    """The payload is rejected; the message says where and what was expected."""


@dataclass(slots=True)
class Scraped:
    """What a parser read from one response body.

    Attributes:
      samples: ``(series_text, value, timestamp_ms | None)`` per sample, in order. The
        series text (``name{labels}`` exactly as it appeared) is the scrape cache's key;
        `Parser.parse_series` turns it into a name and labels on a cache miss.
      types: Metric family name → type (``counter``, ``gauge``, ``histogram``,
        ``summary``, ``untyped``, and for OpenMetrics also ``gaugehistogram``, ``info``,
        ``stateset``, ``unknown``).
    """

    samples: list[RawSample] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)


class Parser(ABC):
    """A parser reads one exposition format.

    Subclasses set ``kind`` and ``content_types`` (media types, lower case, without
    parameters). Parsers are stateless and must not block: they run on the Trio thread.
    """

    kind: ClassVar[str]
    content_types: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def accepts(cls, content_type: str, media_type: str) -> bool:
        """Whether this parser reads a response with this ``Content-Type``."""
        return media_type in cls.content_types

    @abstractmethod
    def parse(self, body: bytes) -> Scraped:
        """Read a whole body; raise `ParseError` to reject the whole scrape."""

    @abstractmethod
    def parse_series(self, text: str) -> tuple[str, dict[str, str]]:
        """Split series text from `Scraped.samples` into metric name and labels."""


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL_PAIR = re.compile(
    r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(,|\Z)', re.S
)
_FLOAT = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf(?:inity)?)|(?i:nan))\Z"
)
_HEX_FLOAT = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?\Z"
)
_INT = re.compile(r"[+-]?\d+\Z")
_TYPES = frozenset(("counter", "gauge", "histogram", "summary", "untyped"))


def parse_float(text: str) -> float:
    """Parse a sample value as Go's ``strconv.ParseFloat`` does.

    Raises:
      ValueError: not a float Go would accept.
    """
    if _FLOAT.match(text):
        return float(text)
    if _HEX_FLOAT.match(text):
        sign = -1.0 if text[0] == "-" else 1.0
        body = text.lstrip("+-")
        if "p" not in body.lower():
            body += "p0"
        return sign * float.fromhex(body)
    raise ValueError(text)


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({"\\": "\\", '"': '"', "n": "\n"}.get(nxt, ch + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class PrometheusTextParser(Parser):
    """The Prometheus text exposition format, version 0.0.4."""

    kind = "prometheus-text"
    content_types = ("text/plain",)

    def parse(self, body: bytes) -> Scraped:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"invalid UTF-8 in payload at byte {exc.start}") from None
        scraped = Scraped()
        samples = scraped.samples
        append = samples.append
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line:
                continue
            first = line[0]
            if first == "#":
                self._comment(line, lineno, scraped.types)
                continue
            if first == " " or first == "\t":
                line = line.lstrip(" \t")
                if not line:
                    continue
                if line[0] == "#":
                    self._comment(line, lineno, scraped.types)
                    continue
            brace = line.rfind("}")
            if brace >= 0:
                series = line[: brace + 1]
                rest = line[brace + 1 :].split()
            else:
                parts = line.split()
                series = parts[0]
                rest = parts[1:]
            if not rest:
                raise ParseError(f"line {lineno}: expected value after metric, got {line!r}")
            if len(rest) > 2:
                raise ParseError(
                    f"line {lineno}: expected timestamp or new record, got {rest[2]!r}"
                )
            try:
                value = parse_float(rest[0])
            except ValueError:
                raise ParseError(f"line {lineno}: invalid value {rest[0]!r}") from None
            ts: int | None = None
            if len(rest) == 2:
                if not _INT.match(rest[1]):
                    raise ParseError(f"line {lineno}: invalid timestamp {rest[1]!r}")
                ts = int(rest[1])
            append((series, value, ts))
        return scraped

    @staticmethod
    def _comment(line: str, lineno: int, types: dict[str, str]) -> None:
        parts = line[1:].split(None, 3)
        if len(parts) < 2 or parts[0] not in ("HELP", "TYPE"):
            return
        if not _METRIC_NAME.match(parts[1]):
            raise ParseError(f"line {lineno}: invalid metric name in comment {parts[1]!r}")
        if parts[0] == "TYPE":
            if len(parts) != 3 or parts[2] not in _TYPES:
                raise ParseError(f"line {lineno}: invalid metric type in {line!r}")
            types[parts[1]] = parts[2]

    def parse_series(self, text: str) -> tuple[str, dict[str, str]]:
        brace = text.find("{")
        if brace < 0:
            name = text
            if not _METRIC_NAME.match(name):
                raise ParseError(f"invalid metric name {name!r}")
            return name, {}
        name = text[:brace].rstrip(" \t")
        if not _METRIC_NAME.match(name):
            raise ParseError(f"invalid metric name {name!r} in {text!r}")
        inner = text[brace + 1 : -1]
        labels: dict[str, str] = {}
        pos = 0
        stripped = inner.strip(" \t")
        while stripped and pos < len(inner):
            m = _LABEL_PAIR.match(inner, pos)
            if m is None:
                raise ParseError(f"invalid label set in {text!r} at offset {brace + 1 + pos}")
            key = m.group(1)
            if key in labels:
                raise ParseError(f"label name {key!r} is not unique in {text!r}")
            labels[key] = _unescape(m.group(2))
            pos = m.end()
            if m.group(3) == "," and not inner[pos:].strip(" \t"):
                break
        return name, labels
