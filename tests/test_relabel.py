"""Relabeling: every action, Prometheus's defaults and checks, RE2 syntax, Go templates,
target relabeling in the pool, metric relabeling in the scrape cache."""

from __future__ import annotations

from typing import Any

import pytest
import trawl
from trawl._batch import Point
from trawl._discovery import DiscoveredTarget
from trawl._relabel import RegexError, RelabelConfig, Relabeler, compile_regex, expand
from trawl._scrape import ScrapeLoop, ScrapePool, build_target
from trawl.testing import MemorySink, exposition_target, make_registry, run_host


def rules(*configs: dict[str, Any]) -> Relabeler:
    return Relabeler([RelabelConfig.model_validate(c, by_alias=True, by_name=False)
                      for c in configs])


def invalid(config: dict[str, Any]) -> str:
    with pytest.raises(ValueError) as info:
        RelabelConfig.model_validate(config, by_alias=True, by_name=False)
    return str(info.value)


BASE = {"__address__": "10.0.0.1:9100", "__meta_pod": "web-1", "a": "foo", "b": "bar"}


@pytest.mark.parametrize(("config", "expected"), [
    # replace: defaults are regex (.*), separator ;, replacement $1
    ({"source-labels": ["a", "b"], "target-label": "c"}, {**BASE, "c": "foo;bar"}),
    ({"source-labels": ["a", "b"], "separator": "-", "target-label": "c"},
     {**BASE, "c": "foo-bar"}),
    ({"source-labels": ["a"], "regex": "f(o+)", "replacement": "x${1}y", "target-label": "c"},
     {**BASE, "c": "xooy"}),
    # named groups and Go's longest-name rule: $1x is the (empty) group "1x"
    ({"source-labels": ["a"], "regex": "(?P<head>f)(.*)", "replacement": "$head-$2-$1x-$$",
      "target-label": "c"}, {**BASE, "c": "f-oo--$"}),
    # templated target label
    ({"source-labels": ["a"], "regex": "(.*)", "target-label": "t_$1", "replacement": "v"},
     {**BASE, "t_foo": "v"}),
    # anchored: "oo" does not match "foo", so nothing changes
    ({"source-labels": ["a"], "regex": "oo", "target-label": "c", "replacement": "x"}, BASE),
    # empty result deletes the target label
    ({"source-labels": ["missing"], "target-label": "a"}, {k: v for k, v in BASE.items()
                                                           if k != "a"}),
    # an expanded target that is not a label name removes the target label as written
    ({"source-labels": ["__address__"], "regex": "(.*)", "target-label": "$1",
      "replacement": "v"}, BASE),
    ({"source-labels": ["a"], "target-label": "__address__", "replacement": "$1:80"},
     {**BASE, "__address__": "foo:80"}),
    ({"action": "lowercase", "source-labels": ["a"], "target-label": "up"},
     {**BASE, "up": "foo"}),
    ({"action": "uppercase", "source-labels": ["a", "b"], "target-label": "up"},
     {**BASE, "up": "FOO;BAR"}),
    ({"action": "uppercase", "source-labels": ["missing"], "target-label": "a"},
     {k: v for k, v in BASE.items() if k != "a"}),
    ({"action": "hashmod", "source-labels": ["__address__"], "modulus": 8,
      "target-label": "shard"}, {**BASE, "shard": "5"}),
    ({"action": "labelmap", "regex": "__meta_(.+)"}, {**BASE, "pod": "web-1"}),
    ({"action": "labelmap", "regex": "(a|b)", "replacement": "copy_$1"},
     {**BASE, "copy_a": "foo", "copy_b": "bar"}),
    ({"action": "labeldrop", "regex": "a|b"}, {"__address__": "10.0.0.1:9100",
                                              "__meta_pod": "web-1"}),
    ({"action": "labelkeep", "regex": "__.*|a"}, {k: v for k, v in BASE.items() if k != "b"}),
    ({"action": "KEEP", "source-labels": ["a"], "regex": "fo+"}, BASE),
    ({"action": "drop", "source-labels": ["a"], "regex": "bar"}, BASE),
    ({"action": "keepequal", "source-labels": ["a"], "target-label": "a"}, BASE),
    ({"action": "dropequal", "source-labels": ["a"], "target-label": "b"}, BASE),
])
def test_action(config, expected):
    assert rules(config)(BASE) == expected


@pytest.mark.parametrize("config", [
    {"action": "keep", "source-labels": ["a"], "regex": "fo"},
    {"action": "drop", "source-labels": ["a"], "regex": "f.*"},
    {"action": "drop", "source-labels": ["missing"], "regex": ""},  # empty value matches ""
    {"action": "keepequal", "source-labels": ["a"], "target-label": "b"},
    {"action": "dropequal", "source-labels": ["a"], "target-label": "a"},
])
def test_dropping_actions(config):
    assert rules(config)(BASE) is None


def test_hashmod_is_prometheus_md5_mod():
    # md5("10.0.0.1:9100"), last 8 bytes big-endian, modulo 8 (checked against Prometheus
    # in test_relabel_vs_prometheus.py over many addresses)
    import hashlib
    digest = hashlib.md5(b"10.0.0.1:9100").digest()
    assert str(int.from_bytes(digest[8:], "big") % 8) == rules(
        {"action": "hashmod", "source-labels": ["__address__"], "modulus": 8,
         "target-label": "s"})(BASE)["s"]


def test_rules_apply_in_order_and_stop_at_a_drop():
    chain = rules(
        {"source-labels": ["a"], "target-label": "x"},
        {"action": "keep", "source-labels": ["x"], "regex": "foo"},
        {"source-labels": ["x", "b"], "separator": "/", "target-label": "y"},
    )
    assert chain(BASE) == {**BASE, "x": "foo", "y": "foo/bar"}
    assert chain({**BASE, "a": "other"}) is None


@pytest.mark.parametrize(("config", "message"), [
    ({"action": "nope"}, "unknown relabel action 'nope'"),
    ({"action": "replace"}, "requires 'target-label' value"),
    ({"action": "hashmod", "target-label": "x"}, "hashmod requires non-zero modulus"),
    ({"action": "hashmod", "target-label": "$1", "modulus": 2}, "invalid 'target-label'"),
    ({"action": "replace", "target-label": "1abc"}, "invalid 'target-label'"),
    ({"action": "lowercase", "target-label": "x", "replacement": "y"},
     "'replacement' can not be set for lowercase"),
    ({"action": "labelmap", "replacement": "1-x"}, "invalid 'replacement' for labelmap"),
    ({"action": "keepequal", "target-label": "x", "regex": "(.*)"},
     "requires only 'source-labels' and 'target-label'"),
    ({"action": "labeldrop", "regex": "x", "source-labels": ["a"]},
     "labeldrop action requires only 'regex'"),
    ({"action": "labelkeep", "regex": "x", "separator": ","},
     "labelkeep action requires only 'regex'"),
    ({"source-labels": ["a-b"], "target-label": "x"}, "not a valid label name"),
    ({"sourcelabels": ["a"], "target-label": "x"}, "sourcelabels"),
])
def test_invalid_configs(config, message):
    assert message in invalid(config)


@pytest.mark.parametrize("pattern", [
    "(?=a)", "(?!a)", "(?<=a)", "(?<!a)", r"(a)\1", "a++", "(?>a)", r"\Z", r"\C", "(?<n>a)",
    "a{1001}", "(", "[z-a]",
])
def test_regex_rejects_what_go_re2_rejects(pattern):
    with pytest.raises(RegexError, match="invalid RE2 regex"):
        compile_regex(pattern)
    assert "invalid RE2 regex" in invalid({"action": "keep", "regex": pattern})


@pytest.mark.parametrize(("pattern", "text"), [
    ("(?P<n>a)b", "ab"), (r"\pL+", "héllo"), (r"\p{Greek}", "λ"), ("[[:alpha:]]+", "abc"),
    (r"a\z", "a"), (r"\Q.*\E", ".*"), ("(?i)ABC", "abc"), ("(?U)a+", "aaa"),
    ("a{1000}", "a" * 1000),
    (r"[(?<]", "<"),
])
def test_regex_accepts_re2_only_forms(pattern, text):
    assert compile_regex(pattern).match(text) is not None


def test_expand_matches_go_expand():
    r = compile_regex(r"(?P<first>\w+)-(\d+)?")
    m = r.match("abc-")
    assert expand("$first|$2|${1}x|$1x|$$|$-|${|$", "abc-", m, r.groupindex) == \
        "abc||abcx||$|$-|${|$"


def scraper(**keys: Any) -> trawl.ScraperConfig:
    base = {"name": "job", "db": "db", "rp": "rp", "discoverer-service": "static-discovery",
            "discoverer-id": "s", "scrape-interval": "5s", "scrape-timeout": "2s"}
    return trawl.ScraperConfig.model_validate({**base, **keys}, by_alias=True, by_name=False)


K8S_RULES = [
    {"source-labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
     "action": "keep", "regex": "true"},
    {"source-labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scheme"],
     "action": "replace", "regex": "(https?)", "target-label": "__scheme__"},
    {"source-labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
     "action": "replace", "target-label": "__metrics_path__", "regex": "(.+)"},
    {"source-labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
     "action": "replace", "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
     "target-label": "__address__"},
    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
    {"source-labels": ["__meta_kubernetes_pod_name"], "target-label": "pod"},
    {"source-labels": ["__meta_kubernetes_pod_annotation_x_param"],
     "target-label": "__param_module"},
]


def test_target_relabeling_sets_address_scheme_path_params_and_meta_labels():
    config = scraper(**{"relabel-configs": K8S_RULES, "params": {"module": ["m0"]}})
    pool = ScrapePool(config, make_registry(load_entrypoints=False), lambda b: None)
    pods = [
        {"__address__": "127.0.0.1:80", "__meta_kubernetes_pod_name": "web-1",
         "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
         "__meta_kubernetes_pod_annotation_prometheus_io_port": "9102",
         "__meta_kubernetes_pod_annotation_prometheus_io_path": "/stats",
         "__meta_kubernetes_pod_annotation_prometheus_io_scheme": "https",
         "__meta_kubernetes_pod_annotation_x_param": "http_2xx",
         "__meta_kubernetes_pod_label_app": "web"},
        {"__address__": "127.0.0.2:80", "__meta_kubernetes_pod_name": "db-1",
         "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "false"},
        {"__address__": "127.0.0.3", "__meta_kubernetes_pod_name": "cache-1",
         "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true"},
    ]
    want = pool.desired([DiscoveredTarget("k8s", "g", p) for p in pods])
    got = {t.url: dict(t.labels) for t in want.values()}
    assert got == {
        "https://127.0.0.1:9102/stats?module=http_2xx": {
            "app": "web", "instance": "127.0.0.1:9102", "job": "job", "pod": "web-1"},
        "http://127.0.0.3:80/metrics?module=m0": {
            "instance": "127.0.0.3:80", "job": "job", "pod": "cache-1"},
    }
    assert [(d.labels["__meta_kubernetes_pod_name"], why) for d, why in pool.dropped] == \
        [("db-1", "dropped by relabeling")]


def test_build_target_scraper_params_override_discovered_params():
    target, _ = build_target({"__address__": "h:1", "__param_x": "discovered"},
                             scraper(params={"x": ["configured"]}))
    assert target is not None
    assert target.url == "http://h:1/metrics?x=configured"


def loop_for(config: trawl.ScraperConfig) -> ScrapeLoop:
    pool = ScrapePool(config, make_registry(load_entrypoints=False), lambda b: None)
    target, _ = build_target({"__address__": "127.0.0.1:1"}, config)
    assert target is not None
    return ScrapeLoop(target, config, pool)


def scrape(loop: ScrapeLoop, body: str, ts: int = 1000) -> list[Point]:
    points: list[Point] = []
    loop._points(body.encode(), "text/plain; version=0.0.4", ts, points)
    return points


METRIC_RULES = [
    {"source-labels": ["__name__"], "regex": "go_.*", "action": "drop"},
    {"source-labels": ["__name__", "code"], "regex": "http_requests_total;(5)..",
     "target-label": "class", "replacement": "${1}xx"},
    {"action": "labeldrop", "regex": "pid"},
    {"source-labels": ["__name__"], "regex": "(.*)_seconds", "target-label": "__name__",
     "replacement": "${1}_s"},
]
BODY = """\
go_goroutines 12
http_requests_total{code="500",pid="1"} 3
http_requests_total{code="200",pid="1"} 7
latency_seconds 0.5
"""


def test_metric_relabeling_result_is_cached_per_series():
    loop = loop_for(scraper(**{"metric-relabel-configs": METRIC_RULES}))
    calls: list[dict[str, str]] = []
    relabel = loop._relabel
    assert relabel is not None

    def counting(labels):
        calls.append(dict(labels))
        return relabel(labels)

    loop._relabel = counting
    first = scrape(loop, BODY)
    assert sorted(s.prefix + repr(v) for s, v, _ in first) == [
        "http_requests_total,class=5xx,code=500,instance=127.0.0.1:1,job=job value=3.0",
        "http_requests_total,code=200,instance=127.0.0.1:1,job=job value=7.0",
        "latency_s,instance=127.0.0.1:1,job=job value=0.5",
    ]
    assert len(calls) == 4
    assert loop._cache["go_goroutines"] is None  # dropped, and remembered as dropped
    for ts in (2000, 3000):
        again = scrape(loop, BODY, ts)
        assert [(s, v) for s, v, _ in again] == [(s, v) for s, v, _ in first]
    assert len(calls) == 4  # steady state: no relabeling at all


def test_metric_relabeling_that_removes_the_name_fails_the_scrape():
    loop = loop_for(scraper(**{"metric-relabel-configs": [
        {"action": "labeldrop", "regex": "__name__"}]}))
    with pytest.raises(trawl.TrawlError, match="removed __name__"):
        scrape(loop, "a 1\n")


async def test_relabeling_end_to_end_from_toml():
    MemorySink.clear()
    async with exposition_target(BODY) as address:
        host = await run_host(f'''
            [[test-discovery]]
              id = "t"
              targets = ["{address}", "127.0.0.1:1"]
            [[scraper]]
              name = "job"
              db = "db"
              rp = "autogen"
              discoverer-service = "test-discovery"
              discoverer-id = "t"
              scrape-interval = "1s"
              scrape-timeout = "1s"
              [[scraper.relabel-configs]]
                source-labels = ["__address__"]
                regex = "127.0.0.1:1"
                action = "drop"
              [[scraper.relabel-configs]]
                target-label = "env"
                replacement = "test"
              [[scraper.metric-relabel-configs]]
                source-labels = ["__name__"]
                regex = "go_.*|http_.*"
                action = "drop"
            [[memory-sink]]
              name = "mem"
              default = true
        ''', seconds=1.5)
    (pool,) = host.pools
    assert [d.labels["__address__"] for d, _ in pool.dropped] == ["127.0.0.1:1"]
    names = {s.measurement for s, _, _ in MemorySink.points("mem")}
    assert names == {"latency_seconds", "up", "scrape_duration_seconds",
                     "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                     "scrape_series_added"}
    assert all(s.tags["env"] == "test" for s, _, _ in MemorySink.points("mem"))
    post = [v for s, v, _ in MemorySink.points("mem")
            if s.measurement == "scrape_samples_post_metric_relabeling"]
    assert post and set(post) == {1.0}


def test_invalid_rule_in_toml_names_the_scraper_and_key():
    import tomllib
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config(tomllib.loads('''
            [[scraper]]
              name = "job"
              db = "db"
              rp = "rp"
              discoverer-service = "test-discovery"
              discoverer-id = "t"
              [[scraper.metric-relabel-configs]]
                source-labels = ["__name__"]
                regex = "(?=lookahead)"
                action = "keep"
        '''), make_registry(load_entrypoints=False), "t.toml")
    text = str(info.value)
    assert 't.toml: [[scraper]] #1 (name = "job")' in text
    assert "metric-relabel-configs.0.regex" in text
    assert "invalid RE2 regex" in text
