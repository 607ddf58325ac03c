"""Processor chains: the built-ins, validation, bounded state, and a third-party processor."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

import pytest
import trawl
from trawl._batch import Point, Series
from trawl._processors import (
    AggregateConfig,
    AggregateProcessor,
    FilterConfig,
    FilterProcessor,
    RateConfig,
    RateProcessor,
    RenameConfig,
    RenameProcessor,
    TagsConfig,
    TagsProcessor,
)
from trawl.testing import MemorySink, exposition_target, make_registry, run_host


def cfg(model: Any, **keys: Any) -> Any:
    return model.model_validate(keys, by_alias=True, by_name=False)


def s(name: str, **tags: str) -> Series:
    return Series(name, tags)


def lines(points: list[Point]) -> list[str]:
    return [f"{p.prefix}{v!r} {ts}" for p, v, ts in points]


POINTS: list[Point] = [
    (s("go_goroutines", job="a"), 12.0, 1000),
    (s("http_requests_total", code="500", job="a"), 3.0, 1000),
    (s("http_requests_total", code="200", job="a"), 7.0, 1000),
    (s("process_cpu_seconds_total", job="b"), 1.5, 1000),
]


def test_filter_by_glob_regex_and_matchers():
    drop_go = FilterProcessor(cfg(FilterConfig, kind="filter", action="drop",
                                  metrics=["go_*", "process_*"]))
    assert [p[0].measurement for p in drop_go.process(list(POINTS))] == [
        "http_requests_total", "http_requests_total"]
    keep_5xx = FilterProcessor(cfg(FilterConfig, kind="filter", **{
        "metrics-regex": "http_.*_total", "labels": ['code=~"5.."', 'job!="b"']}))
    assert lines(keep_5xx.process(list(POINTS))) == [
        "http_requests_total,code=500,job=a value=3.0 1000"]
    by_label = FilterProcessor(cfg(FilterConfig, kind="filter", action="drop",
                                   labels=['job="b"']))
    assert len(by_label.process(list(POINTS))) == 3
    # anchored regex: "http" alone does not match the whole name
    anchored = FilterProcessor(cfg(FilterConfig, kind="filter", **{"metrics-regex": "http"}))
    assert anchored.process(list(POINTS)) == []


def test_rename_and_tags():
    rename = RenameProcessor(cfg(RenameConfig, kind="rename",
                                 metrics={"go_goroutines": "goroutines"}, tags={"job": "service"}))
    assert lines(rename.process(POINTS[:2])) == [
        "goroutines,service=a value=12.0 1000",
        "http_requests_total,code=500,service=a value=3.0 1000"]
    tags = TagsProcessor(cfg(TagsConfig, kind="tags", add={"env": "prod", "job": "ignored"},
                             set={"dc": "eu"}, drop=["code"]))
    assert lines(tags.process(POINTS[1:2])) == [
        "http_requests_total,dc=eu,env=prod,job=a value=3.0 1000"]
    tags_set = TagsProcessor(cfg(TagsConfig, kind="tags", set={"job": "forced"}))
    assert lines(tags_set.process(POINTS[:1])) == ["go_goroutines,job=forced value=12.0 1000"]


def test_rate_is_per_second_and_reset_aware():
    rate = RateProcessor(cfg(RateConfig, kind="rate"))
    rate.types = {"c": "counter", "g": "gauge"}
    c, g = s("c_total"), s("g")
    rate.types = {"c_total": "counter", "g": "gauge"}
    assert rate.process([(c, 10.0, 0), (g, 1.0, 0)]) == [(g, 1.0, 0)]  # first: no rate yet
    assert rate.process([(c, 30.0, 10_000), (g, 2.0, 10_000)]) == [(c, 2.0, 10_000),
                                                                  (g, 2.0, 10_000)]
    assert rate.process([(c, 5.0, 15_000)]) == [(c, 1.0, 15_000)]  # reset: counts from 0
    untyped = RateProcessor(cfg(RateConfig, kind="rate", **{"drop-others": True}))
    untyped.process([(s("x_total"), 1.0, 0), (s("y"), 1.0, 0)])
    assert untyped.process([(s("x_total"), 3.0, 2000), (s("y"), 5.0, 2000)]) == [
        (s("x_total"), 1.0, 2000)]


def test_rate_forgets_series_that_disappear_and_stays_bounded():
    rate = RateProcessor(cfg(RateConfig, kind="rate", expire="10s", **{"max-series": 3}))
    rate.types = {}
    for i in range(5):
        rate.process([(s(f"m{i}_total"), 1.0, 1000)])
    assert len(rate._last) == 3  # bounded: the oldest went first
    rate.process([(s("m4_total"), 2.0, 30_000)])
    assert list(rate._last) == [s("m4_total").prefix]  # unseen for 10 s: forgotten


def test_aggregate_emits_one_point_per_window():
    agg = AggregateProcessor(cfg(AggregateConfig, kind="aggregate", window="10s",
                                 functions=["mean", "min", "max", "sum", "count", "last"]))
    a = s("temp", room="a")
    out: list[Point] = []
    for ts, value in [(0, 1.0), (3000, 5.0), (9999, 3.0), (10_000, 7.0), (25_000, 2.0)]:
        out += agg.process([(a, value, ts)])
    assert lines(out) == [
        "temp,room=a value_mean=3.0 0", "temp,room=a value_min=1.0 0",
        "temp,room=a value_max=5.0 0", "temp,room=a value_sum=9.0 0",
        "temp,room=a value_count=3.0 0", "temp,room=a value_last=3.0 0",
        "temp,room=a value_mean=7.0 10000", "temp,room=a value_min=7.0 10000",
        "temp,room=a value_max=7.0 10000", "temp,room=a value_sum=7.0 10000",
        "temp,room=a value_count=1.0 10000", "temp,room=a value_last=7.0 10000",
    ]
    single = AggregateProcessor(cfg(AggregateConfig, kind="aggregate", window="1m"))
    b = s("temp", room="b")
    single.process([(a, 1.0, 1000), (b, 4.0, 2000), (a, 3.0, 3000)])
    # b disappears; the next window's first point closes the window for both, then b is gone
    assert lines(single.process([(a, 9.0, 61_000)])) == [
        "temp,room=a value=2.0 0", "temp,room=b value=4.0 0"]
    assert lines(single.process([(a, 1.0, 125_000)])) == ["temp,room=a value=9.0 60000"]
    assert list(single._open) == [a]


def parse(toml: str, registry: Any = None) -> trawl.Config:
    return trawl.parse_config(tomllib.loads(toml), registry or make_registry(
        load_entrypoints=False), "p.toml")


SCRAPER = '''
[[test-discovery]]
  id = "t"
[[memory-sink]]
  name = "mem"
  default = true
[[scraper]]
  name = "job"
  db = "db"
  rp = "rp"
  discoverer-service = "test-discovery"
  discoverer-id = "t"
'''


@pytest.mark.parametrize(("processor", "message"), [
    ('kind = "nope"', "unknown processor 'nope'"),
    ('kind = "filter"', "a filter needs 'metrics', 'metrics-regex' or 'labels'"),
    ('kind = "filter"\n  metrics-regex = "(?!x)"', "invalid RE2 regex"),
    ('kind = "filter"\n  labels = ["code~5"]', "invalid label matcher"),
    ('kind = "filter"\n  metrics = ["a"]\n  colour = "red"', 'unknown key "colour"'),
    ('kind = "aggregate"\n  functions = ["median"]', "functions.0"),
    ('kind = "rate"\n  expire = "soon"', "expire"),
    ('kind = "tags"', "a tags processor needs"),
])
def test_processor_options_are_validated(processor, message):
    with pytest.raises(trawl.ConfigError) as info:
        parse(SCRAPER + "  [[scraper.processors]]\n  " + processor + "\n")
    assert message in str(info.value)
    assert '[[scraper]] #1 (name = "job"): [[scraper.processors]] #1' in str(info.value)


# A third-party processor, registered through the hook like any plugin.
class DoubleConfig(trawl.ProcessorConfig):
    factor: float = 2.0


class DoubleProcessor(trawl.Processor):
    kind = "double"
    Config = DoubleConfig

    def process(self, points: list[Point]) -> list[Point]:
        factor = self.config.factor  # type: ignore[attr-defined]
        return [(series, value * factor, ts) for series, value, ts in points]


class ThirdPartyPlugin:
    @trawl.hookimpl
    def trawl_register_processors(self, register: Callable[[type[trawl.Processor]], None]
                                  ) -> None:
        register(DoubleProcessor)


async def test_third_party_processor_in_a_chain_with_builtins():
    MemorySink.clear()
    registry = make_registry(ThirdPartyPlugin(), load_entrypoints=False)
    assert registry.owners[("processors", "double")] != registry.owners[("processors", "tags")]
    body = "# TYPE a_total counter\na_total 3\nb 1\ngo_x 5\n"
    async with exposition_target(body) as address:
        config = parse(SCRAPER.replace('id = "t"', f'id = "t"\n  targets = ["{address}"]', 1)
                       + '''  scrape-interval = "1s"
  scrape-timeout = "1s"
  [[scraper.processors]]
    kind = "filter"
    action = "drop"
    metrics = ["go_*", "scrape_*"]
  [[scraper.processors]]
    kind = "double"
    factor = 10
  [[scraper.processors]]
    kind = "tags"
    set = {env = "test"}
  [[scraper.processors]]
    kind = "rename"
    metrics = {b = "bee"}
''', registry)
        await run_host(config, seconds=1.5, registry=registry)
    got = {(p.measurement, v) for p, v, _ in MemorySink.points("mem")}
    # processors see the scraped samples only; the synthetic series pass them by
    assert ("a_total", 30.0) in got
    assert ("bee", 10.0) in got
    assert not any(name.startswith("go_") for name, _ in got)
    assert all(p.tags.get("env") == "test" for p, _, _ in MemorySink.points("mem")
               if p.measurement in ("a_total", "bee"))
