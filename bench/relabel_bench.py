"""Cost of a 10-rule metric relabel chain per sample, steady state and on a cold cache.

Runs the real scrape path (`ScrapeLoop._points`: parse, scrape-cache lookup, relabel on a
miss, InfluxDB mapping) over the node exporter payload in ``tests/data/node_exporter.prom``,
once without metric relabeling and once with the 10 rules below. Each figure is the median
of repeats; the ratio is taken within the same run.

    .venv/bin/python bench/relabel_bench.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import trawl
from trawl._batch import Point
from trawl._scrape import ScrapeLoop, ScrapePool, build_target
from trawl.testing import make_registry

PAYLOAD = Path(__file__).parent.parent / "tests" / "data" / "node_exporter.prom"

RULES: list[dict[str, Any]] = [
    {"source-labels": ["__name__"], "regex": "go_memstats_.*_bytes_total", "action": "drop"},
    {"source-labels": ["__name__"], "regex": "node_scrape_collector_.*", "action": "drop"},
    {"source-labels": ["device"], "regex": "(sd[a-z]+)[0-9]*", "target-label": "disk"},
    {"source-labels": ["mode"], "action": "uppercase", "target-label": "mode"},
    {"source-labels": ["__name__", "cpu"], "separator": "@", "regex": "node_cpu.*@(.*)",
     "target-label": "core", "replacement": "cpu${1}"},
    {"action": "labelmap", "regex": "fs(.*)", "replacement": "filesystem_$1"},
    {"action": "labeldrop", "regex": "fstype|fs.*"},
    {"source-labels": ["instance"], "action": "hashmod", "modulus": 4,
     "target-label": "shard"},
    {"source-labels": ["__name__"], "regex": "(node_.*)_bytes", "target-label": "__name__",
     "replacement": "${1}_b"},
    {"source-labels": ["__name__"], "regex": "promhttp_.*", "action": "drop"},
]


def make_loop(rules: list[dict[str, Any]]) -> ScrapeLoop:
    config = trawl.ScraperConfig.model_validate({
        "name": "job", "db": "db", "rp": "rp", "discoverer-service": "static-discovery",
        "discoverer-id": "s", "scrape-interval": "10s", "scrape-timeout": "5s",
        "metric-relabel-configs": rules,
    }, by_alias=True, by_name=False)
    pool = ScrapePool(config, make_registry(load_entrypoints=False), lambda b: None)
    target, _ = build_target({"__address__": "127.0.0.1:9100"}, config)
    assert target is not None
    return ScrapeLoop(target, config, pool)


def scrape(loop: ScrapeLoop, body: bytes) -> int:
    points: list[Point] = []
    loop._points(body, "text/plain; version=0.0.4", 1_700_000_000_000, points)
    return len(points)


def timed(loop: ScrapeLoop, body: bytes, rounds: int) -> float:
    t0 = time.perf_counter()
    for _ in range(rounds):
        scrape(loop, body)
    return (time.perf_counter() - t0) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=50, help="scrapes per repeat")
    args = parser.parse_args()
    body = PAYLOAD.read_bytes()
    samples = len(make_loop([]).pool.parser("text/plain").parse(body).samples)
    steady: dict[str, list[float]] = {"none": [], "10 rules": []}
    cold: dict[str, list[float]] = {"none": [], "10 rules": []}
    loops = {"none": make_loop([]), "10 rules": make_loop(RULES)}
    for loop in loops.values():
        scrape(loop, body)  # fill the scrape cache
    kept = scrape(loops["10 rules"], body)
    for _ in range(args.repeats):
        for name, rules in (("none", []), ("10 rules", RULES)):
            steady[name].append(timed(loops[name], body, args.rounds))
            fresh = make_loop(rules)
            t0 = time.perf_counter()
            scrape(fresh, body)
            cold[name].append(time.perf_counter() - t0)
    print(f"payload: {PAYLOAD.name}, {samples} samples ({kept} kept by the 10 rules), "
          f"median of {args.repeats} repeats")
    print(f"{'':22} {'µs/sample':>10} {'ratio':>7}")
    base_steady = statistics.median(steady["none"]) / samples
    base_cold = statistics.median(cold["none"]) / samples
    for label, table, base in (("steady", steady, base_steady), ("first scrape", cold, base_cold)):
        for name, values in table.items():
            per = statistics.median(values) / samples
            print(f"{label + ', ' + name:22} {per * 1e6:10.3f} {per / base:7.2f}")
    relabel_cold = (statistics.median(cold["10 rules"]) - statistics.median(cold["none"]))
    print(f"10-rule chain on a cache miss: {relabel_cold / samples * 1e6:.2f} µs per series")


if __name__ == "__main__":
    main()
