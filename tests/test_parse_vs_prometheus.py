"""trawl's parsers against the real Prometheus 2.42, case by case (``tests/data/parse``).

Every corpus case is served from one loopback HTTP server (one path per case, with its
``Content-Type``); one Prometheus scrapes them all, one job per case. Per case, Prometheus's
verdict (target ``up``/``down``) must equal trawl's, through both of trawl's routes (the
scrape loop's ``parse`` + ``parse_series``, and ``parse_all`` as ``trawl parse`` uses it);
for accepted cases the stored series, label values and value strings (as the query API
prints them), and ``scrape_samples_scraped``, must equal what trawl read; for rejected
cases, trawl's message (without its ``line N:`` prefix) must be Prometheus's ``lastError``.

Deliberate differences, not in the corpus: an OpenMetrics body ending in ``#`` without a
newline makes Prometheus 2.42 panic (index out of range); trawl rejects it.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trawl._config import ScraperConfig
from trawl._parsing import Parser
from trawl._plugins import Registry, collect, get_plugin_manager
from trawl._scrape import ScrapePool

from tests.data.parse import (
    EXPECTED,
    Case,
    generated_cases,
    load_cases,
    normalized_error,
    read_both,
    sorted_series,
)
from tests.servers import wait_until
from tests.servers.prometheus import Prometheus

pytestmark = [pytest.mark.servers, pytest.mark.slow]

AUTO = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling", "scrape_series_added"}
CORPUS_CASES = load_cases()
# TRAWL_PARSE_SEED / TRAWL_PARSE_GENERATED hunt with other generated bodies.
CASES = CORPUS_CASES + generated_cases(seed=int(os.environ.get("TRAWL_PARSE_SEED", "242")),
                                       count=int(os.environ.get("TRAWL_PARSE_GENERATED", "160")))


class CaseServer:
    """Serves case N at ``/case/N``; records the request headers."""

    def __init__(self, cases: list[Case]) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.headers.append(dict(self.headers.items()))
                try:
                    case = cases[int(self.path.rsplit("/", 1)[1])]
                except (ValueError, IndexError):
                    self.send_error(404)
                    return
                self.send_response(200)
                if case.content_type:
                    self.send_header("Content-Type", case.content_type)
                self.send_header("Content-Length", str(len(case.body)))
                self.end_headers()
                self.wfile.write(case.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CaseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Prometheus's verdict, series and sample count for every case."""
    workdir: Path = tmp_path_factory.mktemp("prom-parse")
    with CaseServer(CASES) as server:
        jobs = [{"job_name": f"case-{i}", "metrics_path": f"/case/{i}",
                 "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}
                for i in range(len(CASES))]
        with Prometheus(workdir, jobs, drop_all=False, scrape_interval="5s") as prom:

            def all_scraped() -> bool:
                active = prom.targets("active")["activeTargets"]
                return len(active) == len(CASES) and all(
                    t["health"] in ("up", "down") for t in active)

            wait_until(all_scraped, 60, "Prometheus to scrape every case")
            targets = {t["labels"]["job"]: t for t in prom.targets("active")["activeTargets"]}
            results: dict[str, Any] = {"accept": server.headers[0].get("Accept", ""),
                                       "cases": {}}
            for i, case in enumerate(CASES):
                job = f"case-{i}"
                query = urllib.parse.urlencode({"query": f'{{job="{job}"}}'})
                data = get_json(f"{prom.url}/api/v1/query?{query}")["data"]["result"]
                series, count = set(), None
                for item in data:
                    labels = dict(item["metric"])
                    name = labels.pop("__name__")
                    if name == "scrape_samples_scraped":
                        count = int(float(item["value"][1]))
                    if name in AUTO:
                        continue
                    labels.pop("job")
                    labels.pop("instance")
                    series.add((name, tuple(sorted(labels.items())), item["value"][1]))
                t = targets[job]
                results["cases"][case.name] = {
                    "up": t["health"] == "up", "error": normalized_error(t["lastError"]),
                    "series": sorted_series([name, dict(labels), value]
                                             for name, labels, value in series),
                    "count": count if t["health"] == "up" else None,
                }
            yield results


@pytest.fixture(scope="module")
def registry() -> Registry:
    return collect(get_plugin_manager(load_entrypoints=False))


def parser_for(registry: Registry, content_type: str) -> Parser:
    """The parser the scrape pool would use for this ``Content-Type``."""
    cls = registry.parser_for(content_type) or registry.parsers["prometheus-text"]
    return cls()


def test_corpus_is_large_and_varied() -> None:
    names = [c.name for c in CORPUS_CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 60
    assert sum(n.startswith("om-") for n in names) >= 20


def test_accept_header_is_prometheus(scraped: dict[str, Any], registry: Registry) -> None:
    prometheus = scraped["accept"]
    assert prometheus == ("application/openmetrics-text;version=1.0.0,"
                          "application/openmetrics-text;version=0.0.1;q=0.75,"
                          "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    pool = ScrapePool(ScraperConfig(name="s", db="db", rp="rp"), registry, lambda batch: None)
    assert pool.accept == prometheus


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_matches_prometheus(case: Case, scraped: dict[str, Any],
                                 registry: Registry) -> None:
    prom = scraped["cases"][case.name]
    parser = parser_for(registry, case.content_type)
    samples, error = read_both(parser, case.body)
    assert (samples is not None) == prom["up"], (
        f"Prometheus {'accepted' if prom['up'] else 'rejected: ' + prom['error']}, "
        f"trawl {'accepted' if samples is not None else 'rejected: ' + error}")
    if samples is None:
        assert normalized_error(error.split(": ", 1)[1]) == prom["error"]
        return
    assert prom["count"] == len(samples)
    if case.countonly:
        return
    # A series twice in one scrape: Prometheus keeps the first sample (the scrape loop's
    # business, not the parser's), so compare first occurrences. Samples with timestamps
    # older than an hour are dropped by Prometheus's storage (out of bounds).
    first: dict[str, list[Any]] = {}
    too_old = (time.time() - 3600) * 1000
    for name, labels, value, ts in samples:
        if ts is not None and ts < too_old:
            continue
        first.setdefault(json.dumps([name, sorted(labels.items())]), [name, labels, value])
    assert sorted_series(first.values()) == prom["series"]


def test_recorded_results_are_prometheus(scraped: dict[str, Any]) -> None:
    """``expected.json`` (which the offline parser tests use) is what Prometheus does.

    ``TRAWL_RECORD_PARSE=1`` rewrites it from this run.
    """
    corpus = {c.name: scraped["cases"][c.name] for c in CORPUS_CASES}
    if os.environ.get("TRAWL_RECORD_PARSE") == "1":
        EXPECTED.write_text(json.dumps(corpus, indent=1, ensure_ascii=False,
                                       sort_keys=True) + "\n")
    assert json.loads(EXPECTED.read_text()) == corpus
