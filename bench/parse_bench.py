#!/usr/bin/env python3
"""Steady-state parse throughput: trawl's parsers against prometheus_client's, same run.

For each payload, samples per CPU-second (``time.process_time``; median over ``--repeats``
rounds in which the methods take turns, each looping for at least ``--min-time`` seconds of
CPU, so that a busy machine slows them alike) of:

  trawl            ``PrometheusTextParser.parse(body)`` plus the scrape cache lookup of every
                   series text, with the cache warm: what the scrape loop pays per scrape
                   once a target's series are known (as Prometheus's scrape cache does)
  trawl_cold       the same with an empty cache: every series through ``parse_series``
                   (a target's first scrape)
  prometheus_client  ``prometheus_client.parser.text_string_to_metric_families`` on the
                   decoded text, every sample consumed

and the same pair for OpenMetrics (``--openmetrics``): trawl's ``OpenMetricsParser`` against
``prometheus_client.openmetrics.parser`` on an OpenMetrics rendering of the payload.

    .venv/bin/python bench/parse_bench.py
    .venv/bin/python bench/parse_bench.py --repeats 9 --openmetrics PAYLOAD...
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from trawl._openmetrics import OpenMetricsParser
from trawl._parsing import Parser, PrometheusTextParser

PAYLOADS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "payloads"
DEFAULT = [PAYLOADS / "node_exporter.prom", PAYLOADS / "synthetic_10k.prom"]


def trawl_warm(parser: Parser, body: bytes) -> Callable[[], int]:
    cache = {text: parser.parse_series(text) for text, _, _ in parser.parse(body).samples}

    def run() -> int:
        get = cache.get
        n = 0
        for text, _value, _ts in parser.parse(body).samples:
            if get(text) is None:
                raise AssertionError("cache miss in steady state")
            n += 1
        return n

    return run


def trawl_cold(parser: Parser, body: bytes) -> Callable[[], int]:
    def run() -> int:
        cache: dict[str, tuple[str, dict[str, str]]] = {}
        for text, _value, _ts in parser.parse(body).samples:
            if text not in cache:
                cache[text] = parser.parse_series(text)
        return len(cache)

    return run


def promclient_text(body: bytes) -> Callable[[], int]:
    from prometheus_client.parser import text_string_to_metric_families

    def run() -> int:
        return sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))

    return run


def promclient_openmetrics(body: bytes) -> Callable[[], int]:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    def run() -> int:
        return sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))

    return run


def to_openmetrics(body: bytes) -> bytes:
    """The payload rendered as OpenMetrics by prometheus_client (first family of a name)."""
    from prometheus_client.openmetrics.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    families, seen = [], set()
    for family in text_string_to_metric_families(body.decode()):
        if family.name not in seen:
            seen.add(family.name)
            families.append(family)

    class Collector:
        def collect(self) -> list[object]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())  # type: ignore[arg-type]
    return bytes(generate_latest(registry))


def calibrate(fn: Callable[[], int], min_time: float) -> int:
    """How many calls of ``fn`` take at least ``min_time`` seconds of CPU."""
    fn()
    loops = 1
    while True:
        t0 = time.process_time()
        for _ in range(loops):
            fn()
        elapsed = time.process_time() - t0
        if elapsed >= min_time:
            return loops
        loops = max(loops * 2, int(loops * min_time / max(elapsed, 1e-9) * 1.1))


def measure(rows: list[tuple[str, Callable[[], int]]], repeats: int, min_time: float
            ) -> dict[str, tuple[int, float]]:
    """Median samples per CPU-second of each method; the methods take turns in every
    repeat, so a busy machine slows them alike and their ratio stays fair."""
    plan = [(name, fn, fn(), calibrate(fn, min_time)) for name, fn in rows]
    rates: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, fn, samples, loops in plan:
            t0 = time.process_time()
            for _ in range(loops):
                fn()
            rates[name].append(samples * loops / (time.process_time() - t0))
    return {name: (samples, statistics.median(rates[name])) for name, _, samples, _ in plan}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("payloads", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--openmetrics", action="store_true", help="also compare OpenMetrics")
    args = ap.parse_args()
    print(f"# Python {platform.python_version()}, prometheus-client "
          f"{version('prometheus-client')}, gc {'on' if gc.isenabled() else 'off'}, "
          f"samples per CPU-second, median of {args.repeats} interleaved rounds")
    print("| payload | samples | method | samples/s | µs/sample | trawl ÷ prometheus_client |")
    print("|---|---|---|---|---|---|")
    for path in args.payloads:
        body = path.read_bytes()
        rows: list[tuple[str, Callable[[], int]]] = [
            ("trawl (warm cache)", trawl_warm(PrometheusTextParser(), body)),
            ("trawl (cold cache)", trawl_cold(PrometheusTextParser(), body)),
            ("prometheus_client", promclient_text(body)),
        ]
        if args.openmetrics:
            om = to_openmetrics(body)
            rows += [
                ("trawl OpenMetrics (warm)", trawl_warm(OpenMetricsParser(), om)),
                ("prometheus_client OpenMetrics", promclient_openmetrics(om)),
            ]
        results = measure(rows, args.repeats, args.min_time)
        for name, (count, rate) in results.items():
            base = ("prometheus_client OpenMetrics" if "OpenMetrics" in name
                    else "prometheus_client")
            ratio = "" if name.startswith("prometheus_client") else (
                f"{rate / results[base][1]:.1f}×")
            print(f"| {path.name} | {count} | {name} | {rate:,.0f} | {1e6 / rate:.2f} | "
                  f"{ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
