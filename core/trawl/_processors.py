"""Built-in processors: ``filter``, ``rename``, ``tags``, ``rate`` and ``aggregate``.

Each works on the InfluxDB series of a point (`trawl.Series`: measurement, tags, field).
The stateless ones cache their decision per series (by its line-protocol prefix), so a
steady target pays a dictionary lookup per sample. The stateful ones (``rate``,
``aggregate``) keep bounded state per series and forget series that disappear.

One processor instance serves every target of a scraper.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ._batch import Point, Series
from ._formats import _family
from ._model import Duration, ProcessorConfig
from ._processing import Processor
from ._relabel import compile_regex

_CACHE_LIMIT = 100_000


def _glob(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


# ------------------------------------------------------------------------------------ filter

_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*\Z')


class _Matcher:
    """A Prometheus label matcher such as ``code=~"5.."`` (regex fully anchored, RE2)."""

    def __init__(self, text: str) -> None:
        m = _MATCHER.match(text)
        if m is None:
            raise ValueError(f'invalid label matcher {text!r}: expected name="value", '
                             'name!="value", name=~"regex" or name!~"regex"')
        self.name, self.op, raw = m.groups()
        self.value = re.sub(r"\\(.)", r"\1", raw)
        self.regex = compile_regex(self.value) if self.op in ("=~", "!~") else None

    def matches(self, tags: Mapping[str, str]) -> bool:
        value = tags.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self.regex is not None
        found = self.regex.match(value) is not None
        return found if self.op == "=~" else not found


class FilterConfig(ProcessorConfig):
    """``kind = "filter"``: keep or drop the points that match.

    A point matches when its metric name (the measurement) matches one of ``metrics``
    (globs) or ``metrics-regex`` (RE2, anchored), if either is given, and every label
    matcher of ``labels`` (Prometheus syntax: ``code=~"5.."``, ``env!="dev"``).
    """

    action: Literal["keep", "drop"] = "keep"
    metrics: list[str] = Field(default_factory=list)
    metrics_regex: str = ""
    labels: list[str] = Field(default_factory=list)

    @field_validator("metrics_regex")
    @classmethod
    def _regex(cls, value: str) -> str:
        if value:
            compile_regex(value)
        return value

    @field_validator("labels")
    @classmethod
    def _matchers(cls, value: list[str]) -> list[str]:
        for text in value:
            _Matcher(text)
        return value

    @model_validator(mode="after")
    def _something(self) -> FilterConfig:
        if not (self.metrics or self.metrics_regex or self.labels):
            raise ValueError("a filter needs 'metrics', 'metrics-regex' or 'labels'")
        return self


class FilterProcessor(Processor):
    kind = "filter"
    Config = FilterConfig

    def __init__(self, config: FilterConfig) -> None:
        super().__init__(config)
        self.keep = config.action == "keep"
        self.glob = _glob(config.metrics)
        self.regex = compile_regex(config.metrics_regex) if config.metrics_regex else None
        self.matchers = [_Matcher(t) for t in config.labels]
        self._decisions: dict[str, bool] = {}

    def _selected(self, series: Series) -> bool:
        name = series.measurement
        if self.glob is not None or self.regex is not None:
            by_glob = self.glob is not None and self.glob.match(name) is not None
            by_regex = self.regex is not None and self.regex.match(name) is not None
            if not (by_glob or by_regex):
                return False
        return all(m.matches(series.tags) for m in self.matchers)

    def process(self, points: list[Point]) -> list[Point]:
        decisions = self._decisions
        if len(decisions) > _CACHE_LIMIT:
            decisions.clear()
        out = []
        for point in points:
            series = point[0]
            passed = decisions.get(series.prefix)
            if passed is None:
                passed = decisions[series.prefix] = self._selected(series) == self.keep
            if passed:
                out.append(point)
        return out


# ---------------------------------------------------------------------------- rename, tags

class _SeriesMapProcessor(Processor):
    """A processor that maps each series to another one, cached by series."""

    def __init__(self, config: ProcessorConfig) -> None:
        super().__init__(config)
        self._mapped: dict[str, Series] = {}

    def map(self, series: Series) -> Series:
        raise NotImplementedError

    def process(self, points: list[Point]) -> list[Point]:
        mapped = self._mapped
        if len(mapped) > _CACHE_LIMIT:
            mapped.clear()
        out = []
        for series, value, ts in points:
            new = mapped.get(series.prefix)
            if new is None:
                new = mapped[series.prefix] = self.map(series)
            out.append((new, value, ts))
        return out


class RenameConfig(ProcessorConfig):
    """``kind = "rename"``: ``metrics = {old = "new"}`` renames measurements (metric names
    in the ``kapacitor`` format), ``tags = {old = "new"}`` renames tag keys."""

    metrics: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> RenameConfig:
        if not (self.metrics or self.tags):
            raise ValueError("a rename needs 'metrics' or 'tags'")
        for new in [*self.metrics.values(), *self.tags.values()]:
            if not new:
                raise ValueError("a new name cannot be empty")
        return self


class RenameProcessor(_SeriesMapProcessor):
    kind = "rename"
    Config = RenameConfig
    config: RenameConfig

    def map(self, series: Series) -> Series:
        renames = self.config.tags
        name = self.config.metrics.get(series.measurement, series.measurement)
        tags = {renames.get(k, k): v for k, v in series.tags.items()}
        return Series(name, tags, series.field)


class TagsConfig(ProcessorConfig):
    """``kind = "tags"``: ``add`` (only where the tag is absent), ``set`` (always, overriding)
    and ``drop`` (tag keys to remove)."""

    add: dict[str, str] = Field(default_factory=dict)
    set: dict[str, str] = Field(default_factory=dict)
    drop: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something(self) -> TagsConfig:
        if not (self.add or self.set or self.drop):
            raise ValueError("a tags processor needs 'add', 'set' or 'drop'")
        return self


class TagsProcessor(_SeriesMapProcessor):
    kind = "tags"
    Config = TagsConfig
    config: TagsConfig

    def map(self, series: Series) -> Series:
        tags = dict(series.tags)
        for key in self.config.drop:
            tags.pop(key, None)
        for key, value in self.config.add.items():
            tags.setdefault(key, value)
        tags.update(self.config.set)
        return Series(series.measurement, tags, series.field)


# -------------------------------------------------------------------------------------- rate

def _metric_name(series: Series) -> str:
    """The Prometheus metric name behind a series, whatever the InfluxDB format."""
    if series.measurement == "prometheus" and series.field not in ("value", "counter", "gauge"):
        return series.field  # telegraf-v2
    return series.measurement


class RateConfig(ProcessorConfig):
    """``kind = "rate"``: counters become their per-second rate (reset-aware).

    A counter is a series of a family typed ``counter`` (or a histogram's or summary's
    buckets, ``_sum`` and ``_count``); without type information, a name ending in
    ``_total``. ``metrics`` (globs) narrows the choice. The first sample of a series gives
    no rate; a value below the previous one is a reset (the rate counts from zero). Other
    points pass unchanged, unless ``drop-others = true``. A series not seen for
    ``expire`` is forgotten; at most ``max-series`` series are tracked.
    """

    metrics: list[str] = Field(default_factory=list)
    drop_others: bool = False
    expire: Duration = 600.0
    max_series: int = Field(default=100_000, gt=0)


class RateProcessor(Processor):
    kind = "rate"
    Config = RateConfig
    config: RateConfig
    wants_types = True

    def __init__(self, config: RateConfig) -> None:
        super().__init__(config)
        self.types: Mapping[str, str] = {}
        self.glob = _glob(config.metrics)
        self._last: dict[str, tuple[float, int]] = {}
        self._is_counter: dict[str, bool] = {}
        self._expire_ms = int(config.expire * 1000)
        self._next_sweep = 0

    def counter(self, series: Series) -> bool:
        name = _metric_name(series)
        if self.glob is not None and self.glob.match(name) is None:
            return False
        if series.field == "counter":
            return True
        _, kind, role = _family(name, self.types)
        if kind == "counter" or role or kind == "histogram":
            return True
        if kind == "summary" and series.field in ("sum", "count"):  # telegraf-v1
            return True
        if kind == "untyped" and not self.types:
            return name.endswith("_total")
        return False

    def process(self, points: list[Point]) -> list[Point]:
        last, is_counter = self._last, self._is_counter
        if len(is_counter) > _CACHE_LIMIT:
            is_counter.clear()
        out = []
        newest = 0
        for point in points:
            series, value, ts = point
            key = series.prefix
            counts = is_counter.get(key)
            if counts is None:
                counts = is_counter[key] = self.counter(series)
            if not counts:
                if not self.config.drop_others:
                    out.append(point)
                continue
            newest = max(newest, ts)
            previous = last.pop(key, None)  # re-inserted below: the dict stays in LRU order
            last[key] = (value, ts)
            if previous is None or ts <= previous[1]:
                continue
            delta = value - previous[0] if value >= previous[0] else value
            out.append((series, delta * 1000.0 / (ts - previous[1]), ts))
        self._forget(newest)
        return out

    def _forget(self, now_ms: int) -> None:
        last = self._last
        while len(last) > self.config.max_series:
            del last[next(iter(last))]
        if now_ms and now_ms >= self._next_sweep:
            self._next_sweep = now_ms + self._expire_ms
            cutoff = now_ms - self._expire_ms
            for key in [k for k, (_, ts) in last.items() if ts < cutoff]:
                del last[key]


# --------------------------------------------------------------------------------- aggregate

Function = Literal["mean", "min", "max", "sum", "count", "last"]


class AggregateConfig(ProcessorConfig):
    """``kind = "aggregate"``: one point per series per ``window`` (downsampling).

    ``functions`` lists what to emit: ``mean``, ``min``, ``max``, ``sum``, ``count``,
    ``last``. With one function the series keeps its field; with several, each is written
    to the field ``<field>_<function>``. Windows are aligned on multiples of ``window``
    since the epoch; a window's points are emitted, stamped with the window's start, as
    soon as a point of a later window arrives for any series of the scraper. A series that
    disappears is emitted once more and forgotten. At most ``max-series`` are tracked.
    """

    window: Duration = 60.0
    functions: list[Function] = Field(default=["mean"], min_length=1)
    max_series: int = Field(default=100_000, gt=0)

    @field_validator("window")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < 0.001:
            raise ValueError("window must be at least 1ms")
        return value


class _Acc:
    __slots__ = ("count", "last", "max", "min", "sum")

    def __init__(self, value: float) -> None:
        self.count = 1
        self.sum = self.min = self.max = self.last = value

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.last = value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def result(self, function: str) -> float:
        if function == "mean":
            return self.sum / self.count
        value: Any = getattr(self, function)
        return float(value)


class AggregateProcessor(Processor):
    kind = "aggregate"
    Config = AggregateConfig
    config: AggregateConfig

    def __init__(self, config: AggregateConfig) -> None:
        super().__init__(config)
        self.window_ms = max(1, round(config.window * 1000))
        self._window = -math.inf
        self._open: dict[Series, _Acc] = {}
        self._outputs: dict[tuple[str, str], Series] = {}
        self.late = 0
        self.overflow = 0

    def process(self, points: list[Point]) -> list[Point]:
        out: list[Point] = []
        window_ms = self.window_ms
        accs = self._open
        for series, value, ts in points:
            window = ts - ts % window_ms
            if window > self._window:
                self._close(out)
                self._window = window
                accs = self._open
            elif window < self._window:
                self.late += 1  # its window is already written
                continue
            acc = accs.get(series)
            if acc is None:
                if len(accs) >= self.config.max_series:
                    self.overflow += 1
                    continue
                accs[series] = _Acc(value)
            else:
                acc.add(value)
        return out

    def _close(self, out: list[Point]) -> None:
        if not self._open:
            return
        ts = int(self._window)
        functions = self.config.functions
        for series, acc in self._open.items():
            if len(functions) == 1:
                out.append((series, acc.result(functions[0]), ts))
                continue
            for function in functions:
                out.append((self._output(series, function), acc.result(function), ts))
        self._open = {}
        if len(self._outputs) > 4 * self.config.max_series:
            self._outputs.clear()

    def _output(self, series: Series, function: str) -> Series:
        key = (series.prefix, function)
        found = self._outputs.get(key)
        if found is None:
            found = self._outputs[key] = Series(series.measurement, series.tags,
                                                f"{series.field}_{function}")
        return found


BUILTIN_PROCESSORS: tuple[type[Processor], ...] = (
    FilterProcessor, RenameProcessor, TagsProcessor, RateProcessor, AggregateProcessor,
)
