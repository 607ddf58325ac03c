"""InfluxDB mappings (the scraper's ``format``) against Telegraf's documented output.

The payloads and expected outputs are those of Telegraf's prometheus parser test cases
(``plugins/parsers/prometheus/testcases/valid_*``: ``input.txt``, ``expected_v1.out``,
``expected_v2.out``) and of the prometheus input plugin's README ("Example Output").
Telegraf's test cases carry a ``_type`` tag (Telegraf's internal metric type, which its
InfluxDB output does not write) and Telegraf adds a ``url`` tag where trawl has the target
labels ``job`` and ``instance``: both are set aside before comparing. Points are compared
as InfluxDB stores them: lines with the same measurement, tags and timestamp are one point.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import trawl
from trawl._batch import Batch, Point
from trawl._formats import go_float
from trawl._scrape import ScrapeLoop, ScrapePool, build_target
from trawl.testing import MemorySink, exposition_target, make_registry, run_host

HISTOGRAM = """\
# HELP apiserver_request_latencies Response latency distribution in microseconds for each verb, resource and client.
# TYPE apiserver_request_latencies histogram
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="125000"} 1994
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="250000"} 1997
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="500000"} 2000
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="1e+06"} 2005
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="2e+06"} 2012
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="4e+06"} 2017
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="8e+06"} 2024
apiserver_request_latencies_bucket{resource="bindings",verb="POST",le="+Inf"} 2025
apiserver_request_latencies_sum{resource="bindings",verb="POST"} 1.02726334e+08
apiserver_request_latencies_count{resource="bindings",verb="POST"} 2025
"""  # noqa: E501
HISTOGRAM_V1 = r"""
apiserver_request_latencies,_type=histogram,resource=bindings,verb=POST +Inf=2025,125000=1994,1e+06=2005,250000=1997,2e+06=2012,4e+06=2017,500000=2000,8e+06=2024,count=2025,sum=102726334
"""  # noqa: E501
HISTOGRAM_V2 = r"""
prometheus,_type=histogram,resource=bindings,verb=POST apiserver_request_latencies_count=2025,apiserver_request_latencies_sum=102726334
prometheus,_type=histogram,le=125000,resource=bindings,verb=POST apiserver_request_latencies_bucket=1994
prometheus,_type=histogram,le=250000,resource=bindings,verb=POST apiserver_request_latencies_bucket=1997
prometheus,_type=histogram,le=500000,resource=bindings,verb=POST apiserver_request_latencies_bucket=2000
prometheus,_type=histogram,le=1e+06,resource=bindings,verb=POST apiserver_request_latencies_bucket=2005
prometheus,_type=histogram,le=2e+06,resource=bindings,verb=POST apiserver_request_latencies_bucket=2012
prometheus,_type=histogram,le=4e+06,resource=bindings,verb=POST apiserver_request_latencies_bucket=2017
prometheus,_type=histogram,le=8e+06,resource=bindings,verb=POST apiserver_request_latencies_bucket=2024
prometheus,_type=histogram,le=+Inf,resource=bindings,verb=POST apiserver_request_latencies_bucket=2025
"""  # noqa: E501

SUMMARY = """\
# HELP http_request_duration_microseconds The HTTP request latencies in microseconds.
# TYPE http_request_duration_microseconds summary
http_request_duration_microseconds{handler="prometheus",quantile="0.5"} 552048.506
http_request_duration_microseconds{handler="prometheus",quantile="0.9"} 5.876804288e+06
http_request_duration_microseconds{handler="prometheus",quantile="0.99"} 5.876804288e+06
http_request_duration_microseconds_sum{handler="prometheus"} 1.8909097205e+07
http_request_duration_microseconds_count{handler="prometheus"} 9
"""
SUMMARY_V1 = r"""
http_request_duration_microseconds,_type=summary,handler=prometheus 0.5=552048.506,0.9=5876804.288,0.99=5876804.288,count=9,sum=18909097.205
"""  # noqa: E501
SUMMARY_V2 = r"""
prometheus,_type=summary,handler=prometheus http_request_duration_microseconds_count=9,http_request_duration_microseconds_sum=18909097.205
prometheus,_type=summary,handler=prometheus,quantile=0.5 http_request_duration_microseconds=552048.506
prometheus,_type=summary,handler=prometheus,quantile=0.9 http_request_duration_microseconds=5876804.288
prometheus,_type=summary,handler=prometheus,quantile=0.99 http_request_duration_microseconds=5876804.288
"""  # noqa: E501

COUNTER = """\
# HELP get_token_fail_count Counter of failed Token() requests to the alternate token source
# TYPE get_token_fail_count counter
get_token_fail_count 0
"""
COUNTER_V1 = "get_token_fail_count,_type=counter counter=0"
COUNTER_V2 = "prometheus,_type=counter get_token_fail_count=0"

GAUGE = """\
# TYPE cadvisor_version_info gauge
cadvisor_version_info{dockerVersion="1.8.2",kernelVersion="3.10.0-229.20.1.el7.x86_64",osVersion="CentOS Linux 7 (Core)"} 1
"""  # noqa: E501
GAUGE_V1 = r"""
cadvisor_version_info,_type=gauge,dockerVersion=1.8.2,kernelVersion=3.10.0-229.20.1.el7.x86_64,osVersion=CentOS\ Linux\ 7\ (Core) gauge=1
"""  # noqa: E501
GAUGE_V2 = r"""
prometheus,_type=gauge,dockerVersion=1.8.2,kernelVersion=3.10.0-229.20.1.el7.x86_64,osVersion=CentOS\ Linux\ 7\ (Core) cadvisor_version_info=1
"""  # noqa: E501

UNTYPED = "some_untyped_total{a=\"b\"} 3\n"


def _split(text: str, sep: str) -> list[str]:
    return [p.replace("\\" + sep, sep) for p in re.split(r"(?<!\\)" + re.escape(sep), text)]


Merged = dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, float]]


def parse_lines(text: str) -> Merged:
    """Line protocol (without timestamps) as InfluxDB stores it: points by series."""
    out: Merged = {}
    for line in text.strip().splitlines():
        key, fields = re.split(r"(?<!\\) ", line)[:2]
        measurement, *tags = _split(key, ",")
        tag_set = tuple(sorted((k, v.replace("\\ ", " ")) for k, v in
                               (t.split("=", 1) for t in tags) if k != "_type"))
        point = out.setdefault((measurement, tag_set), {})
        for f in fields.split(","):
            name, value = f.rsplit("=", 1)
            point[name] = float(value)
    return out


def merge(points: list[Point]) -> Merged:
    out: Merged = {}
    for series, value, _ in points:
        tags = tuple(sorted((k, v) for k, v in series.tags.items()
                            if k not in ("job", "instance")))
        out.setdefault((series.measurement, tags), {})[series.field] = value
    return out


def scraper(**keys: Any) -> trawl.ScraperConfig:
    base = {"name": "job", "db": "db", "rp": "rp", "discoverer-service": "static-discovery",
            "discoverer-id": "s", "scrape-interval": "5s", "scrape-timeout": "2s"}
    return trawl.ScraperConfig.model_validate({**base, **keys}, by_alias=True, by_name=False)


def scrape(fmt: str, body: str) -> list[Point]:
    config = scraper(format=fmt)
    pool = ScrapePool(config, make_registry(load_entrypoints=False), lambda b: None)
    target, _ = build_target({"__address__": "127.0.0.1:1"}, config)
    assert target is not None
    loop = ScrapeLoop(target, config, pool)
    points: list[Point] = []
    loop._points(body.encode(), "text/plain; version=0.0.4", 1000, points)
    return points


@pytest.mark.parametrize(("body", "v1", "v2"), [
    (HISTOGRAM, HISTOGRAM_V1, HISTOGRAM_V2),
    (SUMMARY, SUMMARY_V1, SUMMARY_V2),
    (COUNTER, COUNTER_V1, COUNTER_V2),
    (GAUGE, GAUGE_V1, GAUGE_V2),
], ids=["histogram", "summary", "counter", "gauge"])
def test_telegraf_documented_output(body, v1, v2):
    assert merge(scrape("telegraf-v1", body)) == parse_lines(v1)
    assert merge(scrape("telegraf-v2", body)) == parse_lines(v2)


def test_telegraf_v1_one_point_per_histogram_in_line_protocol():
    batch = Batch("db", "", scrape("telegraf-v1", HISTOGRAM))
    lines = batch.line_protocol().splitlines()
    keys = {line.split(" ")[0] for line in lines}
    assert keys == {"apiserver_request_latencies,instance=127.0.0.1:1,job=job,resource=bindings,"
                    "verb=POST"}
    assert sorted(line.split(" ")[1].split("=")[0] for line in lines) == sorted(
        ["+Inf", "125000", "1e+06", "250000", "2e+06", "4e+06", "500000", "8e+06", "count",
         "sum"])


def test_untyped_and_kapacitor():
    assert merge(scrape("telegraf-v1", UNTYPED)) == {
        ("some_untyped_total", (("a", "b"),)): {"value": 3.0}}
    assert merge(scrape("telegraf-v2", UNTYPED)) == {
        ("prometheus", (("a", "b"),)): {"some_untyped_total": 3.0}}
    assert merge(scrape("kapacitor", HISTOGRAM))[
        ("apiserver_request_latencies_bucket", (("le", "+Inf"), ("resource", "bindings"),
                                                ("verb", "POST")))] == {"value": 2025.0}


README_SOURCE = """\
# HELP go_gc_duration_seconds A summary of the GC invocation durations.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 7.4545e-05
go_gc_duration_seconds{quantile="0.25"} 7.6999e-05
go_gc_duration_seconds{quantile="0.5"} 0.000277935
go_gc_duration_seconds{quantile="0.75"} 0.000706591
go_gc_duration_seconds{quantile="1"} 0.000706591
go_gc_duration_seconds_sum 0.00113607
go_gc_duration_seconds_count 4
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 15
# HELP cpu_usage_user Telegraf collected metric
# TYPE cpu_usage_user gauge
cpu_usage_user{cpu="cpu0"} 1.4112903225816156
cpu_usage_user{cpu="cpu1"} 0.702106318955865
cpu_usage_user{cpu="cpu2"} 2.0161290322588776
cpu_usage_user{cpu="cpu3"} 1.5045135406226022
"""
# The README's example output (its values come from another scrape than its source, so
# only series and field keys are compared).
README_V1 = r"""
go_gc_duration_seconds,url=http://example.org:9273/metrics 1=0.001336611,count=14,sum=0.004527551,0=0.000057965,0.25=0.000083812,0.5=0.000286537,0.75=0.000365303 1505776733000000000
go_goroutines,url=http://example.org:9273/metrics gauge=21 1505776695000000000
cpu_usage_user,cpu=cpu0,url=http://example.org:9273/metrics gauge=1.513622603430151 1505776751000000000
cpu_usage_user,cpu=cpu1,url=http://example.org:9273/metrics gauge=5.829145728641773 1505776751000000000
cpu_usage_user,cpu=cpu2,url=http://example.org:9273/metrics gauge=2.119071644805144 1505776751000000000
cpu_usage_user,cpu=cpu3,url=http://example.org:9273/metrics gauge=1.5228426395944945 1505776751000000000
"""  # noqa: E501
README_V2 = r"""
prometheus,quantile=1,url=http://example.org:9273/metrics go_gc_duration_seconds=0.005574303 1556075100000000000
prometheus,quantile=0.75,url=http://example.org:9273/metrics go_gc_duration_seconds=0.0001046 1556075100000000000
prometheus,quantile=0.5,url=http://example.org:9273/metrics go_gc_duration_seconds=0.0000719 1556075100000000000
prometheus,quantile=0.25,url=http://example.org:9273/metrics go_gc_duration_seconds=0.0000579 1556075100000000000
prometheus,quantile=0,url=http://example.org:9273/metrics go_gc_duration_seconds=0.0000349 1556075100000000000
prometheus,url=http://example.org:9273/metrics go_gc_duration_seconds_count=324,go_gc_duration_seconds_sum=0.091340353 1556075100000000000
prometheus,url=http://example.org:9273/metrics go_goroutines=15 1556075100000000000
prometheus,cpu=cpu0,url=http://example.org:9273/metrics cpu_usage_user=1.513622603430151 1505776751000000000
prometheus,cpu=cpu1,url=http://example.org:9273/metrics cpu_usage_user=5.829145728641773 1505776751000000000
prometheus,cpu=cpu2,url=http://example.org:9273/metrics cpu_usage_user=2.119071644805144 1505776751000000000
prometheus,cpu=cpu3,url=http://example.org:9273/metrics cpu_usage_user=1.5228426395944945 1505776751000000000
"""  # noqa: E501


def shape(merged: Merged) -> set[tuple[str, tuple[tuple[str, str], ...], frozenset[str]]]:
    return {(m, tuple(t for t in tags if t[0] != "url"), frozenset(fields))
            for (m, tags), fields in merged.items()}


@pytest.mark.parametrize(("fmt", "documented"), [
    ("telegraf-v1", README_V1), ("telegraf-v2", README_V2)])
def test_telegraf_readme_example(fmt, documented):
    assert shape(merge(scrape(fmt, README_SOURCE))) == shape(parse_lines(documented))


@pytest.mark.parametrize(("value", "text"), [
    (125000.0, "125000"), (1e6, "1e+06"), (100000.0, "100000"), (0.5, "0.5"), (0.0001, "0.0001"),
    (0.00001, "1e-05"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (0.0, "0"),
    (1.02726334e8, "1.02726334e+08"), (-2.5, "-2.5"), (123456.7, "123456.7"),
    (1234567.0, "1.234567e+06"), (1e21, "1e+21"),
])
def test_go_float_format(value, text):
    assert go_float(value) == text


async def test_format_key_end_to_end():
    MemorySink.clear()
    async with exposition_target(SUMMARY) as address:
        await run_host(f'''
            [[test-discovery]]
              id = "t"
              targets = ["{address}"]
            [[scraper]]
              name = "job"
              db = "db"
              rp = "autogen"
              format = "telegraf-v1"
              discoverer-service = "test-discovery"
              discoverer-id = "t"
              scrape-interval = "1s"
              scrape-timeout = "1s"
            [[memory-sink]]
              name = "mem"
              default = true
        ''', seconds=1.5)
    merged = merge(MemorySink.points("mem"))
    assert merged[("http_request_duration_microseconds", (("handler", "prometheus"),))] == \
        {"0.5": 552048.506, "0.9": 5876804.288, "0.99": 5876804.288, "count": 9.0,
         "sum": 18909097.205}
    assert merged[("up", ())] == {"value": 1.0}


def test_unknown_format_is_a_config_error():
    with pytest.raises(ValueError, match="telegraf-v1"):
        scraper(format="telegraf-v3")
