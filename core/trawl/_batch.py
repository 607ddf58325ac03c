"""Points on their way to sinks: series with their line-protocol prefix, and batches of them."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\\": "\\\\"})
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\\": "\\\\"})


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    return text.translate(_TAG_ESCAPES)


class Series:
    """One InfluxDB series and field: measurement, sorted tags, field key.

    Built once per distinct scraped series and kept in the scrape cache, so that a
    steady target pays only for the value and the timestamp of each sample.
    """

    __slots__ = ("field", "measurement", "prefix", "tags")

    def __init__(self, measurement: str, tags: Mapping[str, str], field: str = "value") -> None:
        self.measurement = measurement
        self.tags = {k: tags[k] for k in sorted(tags) if tags[k] != ""}
        self.field = field
        key = escape_measurement(measurement)
        if self.tags:
            key += "," + ",".join(f"{escape_tag(k)}={escape_tag(v)}" for k, v in self.tags.items())
        self.prefix = f"{key} {escape_tag(field)}="

    def __repr__(self) -> str:
        return f"Series({self.prefix[:-1]!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Series) and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash(self.prefix)


Point = tuple[Series, float, int]
"""``(series, value, timestamp in ms)``."""


@dataclass(slots=True)
class Batch:
    """Points bound for one database and retention policy.

    Attributes:
      db: Database (InfluxDB 1.x) or the first half of the ``db/rp`` bucket.
      rp: Retention policy; empty means the database's default.
      points: The points, each ``(series, value, timestamp_ms)``.
      lines: Points already serialized as line protocol (for instance read back from a
        spool); they are written after ``points``.
    """

    db: str
    rp: str = ""
    points: list[Point] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.points) + len(self.lines)

    def iter_lines(self) -> Iterator[str]:
        for series, value, ts in self.points:
            yield f"{series.prefix}{value!r} {ts}"
        yield from self.lines

    def line_protocol(self) -> str:
        """The batch as InfluxDB line protocol, one point a line, ms precision."""
        parts: list[str] = []
        append = parts.append
        last_ts: int | None = None
        suffix = ""
        for series, value, ts in self.points:
            if ts != last_ts:  # the points of one scrape share their timestamp
                last_ts = ts
                suffix = f" {ts}\n"
            append(series.prefix + repr(value) + suffix)
        parts.extend(line + "\n" for line in self.lines)
        return "".join(parts)

    def records(self) -> Iterator[dict[str, Any]]:
        """The points as JSON-ready dicts (``lines`` are not included)."""
        for series, value, ts in self.points:
            yield {
                "db": self.db,
                "rp": self.rp,
                "measurement": series.measurement,
                "tags": series.tags,
                "fields": {series.field: value},
                "time": ts,
            }


def is_writable(value: float) -> bool:
    """InfluxDB stores neither NaN nor infinities."""
    return math.isfinite(value)
