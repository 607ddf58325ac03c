"""Prometheus 2.42 and trawl over the same file_sd targets with the same relabeling rules.

Real targets are served on loopback; both read one file_sd file. We compare what each made
of it: active target label sets and scrape URLs, dropped targets (their discovered
labels), and the stored series (Prometheus's ``/api/v1/series`` against what trawl wrote).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from trawl.testing import ExpositionServer, MemorySink, run_host

from tests.servers import wait_until
from tests.servers.prometheus import Prometheus, comparable

pytestmark = [pytest.mark.servers, pytest.mark.slow]

JOB = "pods"
A = "__meta_kubernetes_pod_annotation_prometheus_io_"

# The usual Kubernetes annotation rules, and then the rest of what operators do.
RELABEL = [
    {"source_labels": [A + "scrape"], "action": "keep", "regex": "true"},
    {"source_labels": [A + "scheme"], "action": "replace", "regex": "(https?)",
     "target_label": "__scheme__"},
    {"source_labels": [A + "path"], "action": "replace", "target_label": "__metrics_path__",
     "regex": "(.+)"},
    {"source_labels": ["__address__", A + "port"], "action": "replace",
     "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
     "target_label": "__address__"},
    {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
    {"source_labels": ["__meta_kubernetes_namespace"], "action": "replace",
     "target_label": "kubernetes_namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "action": "replace",
     "target_label": "kubernetes_pod_name"},
    # sharding: a visible shard label, and one shard of four dropped
    {"source_labels": ["__address__"], "action": "hashmod", "modulus": 3,
     "target_label": "shard"},
    {"source_labels": ["kubernetes_pod_name"], "action": "hashmod", "modulus": 4,
     "target_label": "__tmp_hash"},
    {"source_labels": ["__tmp_hash"], "action": "drop", "regex": "3"},
    # case changes, empty source values, non-matching regexes, templated target labels
    {"source_labels": ["__meta_env"], "action": "lowercase", "target_label": "env"},
    {"source_labels": ["__meta_env", "__meta_zone"], "separator": "/",
     "action": "uppercase", "target_label": "where"},
    {"source_labels": ["__meta_missing"], "target_label": "team"},
    {"source_labels": ["__meta_kubernetes_namespace"], "regex": "no-match",
     "target_label": "ns_copy"},
    {"source_labels": ["__meta_role"], "regex": "(.+)", "target_label": "role_$1",
     "replacement": "yes"},
    {"source_labels": ["__meta_role"], "regex": "(.*)", "target_label": "empty_$1",
     "replacement": "x"},
    {"source_labels": ["__meta_zone"], "regex": "(z)(.*)", "target_label": "zone",
     "replacement": "${2}-$1"},
    {"source_labels": ["__meta_twin_a"], "action": "dropequal", "target_label": "__meta_twin_b"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "__param_pod"},
    {"action": "labeldrop", "regex": "secret_.*"},
]

METRIC_RELABEL = [
    {"source_labels": ["__name__"], "regex": "go_.*", "action": "drop"},
    {"source_labels": ["__name__", "code"], "regex": "http_requests_total;(5)..",
     "target_label": "class", "replacement": "${1}xx"},
    {"source_labels": ["method"], "action": "lowercase", "target_label": "method"},
    {"source_labels": ["method"], "action": "uppercase", "target_label": "METHOD"},
    {"action": "labelmap", "regex": "tmp_(.+)", "replacement": "copied_$1"},
    {"action": "labeldrop", "regex": "pid|tmp_.*"},
    {"source_labels": ["__name__"], "regex": "(.*)_seconds", "target_label": "__name__",
     "replacement": "${1}_s"},
    {"source_labels": ["no_such_label"], "target_label": "handler"},
    {"source_labels": ["__name__"], "regex": "ignored_.*", "action": "drop"},
    {"source_labels": ["__name__"], "action": "keep",
     "regex": "http_.*|latency_s|temperature|build_info"},
]

BODY = """\
# TYPE go_goroutines gauge
go_goroutines 12
# TYPE http_requests_total counter
http_requests_total{code="500",method="Get",pid="7",handler="/a"} 3
http_requests_total{code="200",method="POST",pid="7",handler="/b"} 7
http_requests_total{code="404",method="",tmp_zone="eu",handler="/c"} 1
latency_seconds{instance="inner",job="inner"} 0.5
temperature{tmp_sensor="t1"} 21.5
ignored_metric 1
build_info{version="1.0"} 1
"""


def pod(name: str, port: int, *, scrape: str = "true", **extra: str) -> dict[str, Any]:
    labels = {
        "__meta_kubernetes_namespace": "prod",
        "__meta_kubernetes_pod_name": name,
        A + "scrape": scrape,
        A + "port": str(port),
        "__meta_kubernetes_pod_label_app": name.split("-")[0],
        "__meta_kubernetes_pod_label_secret_token": "hidden",
        "__meta_twin_a": name,
        "__meta_twin_b": "b",
        **extra,
    }
    return {"targets": ["127.0.0.1:1"], "labels": labels}


def to_trawl(rule: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("_", "-"): value for key, value in rule.items()}


def toml_value(value: Any) -> str:
    return json.dumps(value)


def toml_tables(name: str, rules: list[dict[str, Any]]) -> str:
    out = []
    for rule in rules:
        out.append(f"  [[scraper.{name}]]")
        out.extend(f"    {k} = {toml_value(v)}" for k, v in to_trawl(rule).items())
    return "\n".join(out)


def prometheus_get(prom: Prometheus, path: str, **query: str) -> Any:
    url = f"{prom.url}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)["data"]


async def test_prometheus_and_trawl_agree(tmp_path: Path):
    servers = [ExpositionServer(BODY) for _ in range(8)]
    for s in servers:
        s.__enter__()
    try:
        await compare(tmp_path, [int(s.address.rsplit(":", 1)[1]) for s in servers])
    finally:
        for s in servers:
            s.__exit__()


async def compare(tmp_path: Path, ports: list[int]) -> None:
    groups = [
        pod("web-1", ports[0], __meta_env="Prod", __meta_zone="zA", __meta_role="db"),
        pod("web-2", ports[1], __meta_env="", __meta_role=""),
        pod("api-1", ports[2], **{A + "path": "/metrics", "__meta_zone": "zz"}),
        pod("api-2", ports[3], __meta_twin_a="same", __meta_twin_b="other"),
        pod("api-3", ports[4], __meta_twin_a="same", __meta_twin_b="same"),  # dropequal
        pod("job-1", ports[5], scrape="false"),  # keep drops it
        pod("job-2", ports[6], **{A + "scheme": "https"}),
        pod("job-3", ports[7], **{A + "port": ""}),  # the port rule does not match
        pod("cron-1", ports[0], **{"__meta_kubernetes_pod_label_app": ""}),
        pod("cron-2", ports[1], __meta_env="MiXeD", __meta_zone="zq"),
        pod("cron-3", ports[2]),
        pod("cron-4", ports[3]),
    ]
    for g in groups[:3]:
        g["labels"]["team"] = "core"  # group label that an empty source value deletes
    sd_file = tmp_path / "targets.json"
    sd_file.write_text(json.dumps(groups))

    job = {"job_name": JOB, "scrape_interval": "1s", "scrape_timeout": "1s",
           "params": {"module": ["default"]},
           "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "1s"}],
           "relabel_configs": RELABEL, "metric_relabel_configs": METRIC_RELABEL}
    with Prometheus(tmp_path / "prom", [job], drop_all=False) as prom:
        MemorySink.clear()
        host = await run_host(f'''
[[file-discovery]]
  id = "f"
  files = ["{sd_file}"]
[[scraper]]
  name = "{JOB}"
  db = "db"
  rp = "autogen"
  discoverer-service = "file-discovery"
  discoverer-id = "f"
  scrape-interval = "1s"
  scrape-timeout = "1s"
  params = {{module = ["default"]}}
{toml_tables("relabel-configs", RELABEL)}
{toml_tables("metric-relabel-configs", METRIC_RELABEL)}
[[memory-sink]]
  name = "mem"
  default = true
''', seconds=3.0)
        (pool,) = host.pools
        ours_active = sorted(
            (loop.target.url, dict(loop.target.labels)) for loop, _ in pool.loops.values()
        )
        ours_dropped = sorted(
            dropped_key(d.labels) for d, why in pool.dropped if why == "dropped by relabeling"
        )
        ours_series = {
            json.dumps({"__name__": s.measurement, **s.tags}, sort_keys=True)
            for s, _, _ in MemorySink.points("mem")
        }

        def prometheus_settled() -> bool:
            data = prom.targets()
            active = data.get("activeTargets", [])
            return (len(active) + len(data.get("droppedTargets", [])) == len(groups)
                    and all(t.get("lastScrape", "").startswith("2") and
                            not t["lastScrape"].startswith("0001") for t in active))

        wait_until(prometheus_settled, 40, "Prometheus to discover and scrape every target")
        await trio.sleep(1.5)  # one more scrape of every target, so that every series is stored
        data = prom.targets()
        theirs_active = sorted((t["scrapeUrl"], t["labels"]) for t in data["activeTargets"])
        theirs_dropped = sorted(dropped_key(t["discoveredLabels"])
                                for t in data["droppedTargets"])
        theirs_series = series_of(prom)

    assert ours_active == theirs_active
    assert len(ours_active) >= 4
    assert ours_dropped == theirs_dropped
    assert len(ours_dropped) >= 3
    assert ours_series == theirs_series
    names = {json.loads(s)["__name__"] for s in ours_series}
    assert {"http_requests_total", "latency_s", "temperature", "build_info", "up"} <= names
    label_names = {k for s in ours_series for k in json.loads(s)}
    assert {"class", "METHOD", "method", "copied_zone", "copied_sensor", "exported_job",
            "exported_instance"} <= label_names
    target_label_names = {k for _, labels in ours_active for k in labels}
    assert {"app", "env", "where", "zone", "shard", "role_db", "empty_"} <= target_label_names
    assert "team" not in target_label_names  # deleted by an empty source value


def dropped_key(labels: dict[str, str]) -> str:
    """A dropped target by its non-empty ``__meta_*`` labels.

    Prometheus 2.42 relabels the discovered label set in place, so ``discoveredLabels`` of
    a dropped target shows whatever the rules had written before the drop (``__address__``
    rewritten, ``__tmp_hash`` added, labels with empty values removed). trawl keeps the
    labels as discovered. The ``__meta_*`` labels no rule writes identify the target in both.
    """
    return json.dumps({k: v for k, v in comparable(labels).items()
                       if k.startswith("__meta_") and v}, sort_keys=True)


def series_of(prom: Prometheus) -> set[str]:
    data = prometheus_get(prom, "/api/v1/series", **{"match[]": f'{{job="{JOB}"}}'})
    return {json.dumps(s, sort_keys=True) for s in data}
