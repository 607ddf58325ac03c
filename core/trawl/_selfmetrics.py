"""trawl's own metrics in the Prometheus text format."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._host import Host

_START = time.time()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((_labels(labels.items()), value))

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            yield f"{self.name}{labels} {value!r}"


def render(host: Host) -> str:
    """Every self-metric of a running host, as one exposition."""
    fams: dict[str, _Family] = {}

    def fam(name: str, kind: str, help_text: str) -> _Family:
        if name not in fams:
            fams[name] = _Family(name, kind, help_text)
        return fams[name]

    for pool in host.pools:
        job = pool.scraper.name
        fam("trawl_scrape_targets", "gauge", "Targets being scraped.").add(
            float(len(pool.loops)), scraper=job)
        fam("trawl_scrape_targets_dropped", "gauge", "Discovered targets not scraped.").add(
            float(len(pool.dropped)), scraper=job)
        fam("trawl_scrape_lateness_max_seconds", "gauge",
            "Longest delay of a scrape's start after its scheduled time.").add(
            pool.max_lateness, scraper=job)
        fam("trawl_scrape_late_total", "counter",
            "Scrapes that started more than 1 s after their scheduled time.").add(
            float(pool.late_scrapes), scraper=job)
        fam("trawl_scrape_missed_total", "counter",
            "Scheduled scrapes skipped because the previous one overran.").add(
            float(pool.missed_scrapes), scraper=job)
        for loop, _ in pool.loops.values():
            h = loop.health
            inst = dict(loop.target.labels).get("instance", "")
            fam("trawl_target_scrapes_total", "counter", "Scrapes of a target.").add(
                float(h.scrapes), scraper=job, instance=inst)
            fam("trawl_target_scrape_failures_total", "counter", "Failed scrapes.").add(
                float(h.failures), scraper=job, instance=inst)
            fam("trawl_target_up", "gauge", "1 if the last scrape succeeded.").add(
                1.0 if h.health == "up" else 0.0, scraper=job, instance=inst)
            fam("trawl_target_scrape_duration_seconds", "gauge", "Last scrape's duration.").add(
                h.last_duration, scraper=job, instance=inst)
            fam("trawl_target_samples", "gauge", "Samples of the last scrape.").add(
                float(h.samples), scraper=job, instance=inst)
    for name, d in host.discovery.discoverers.items():
        dh = d.health
        fam("trawl_discoverer_refreshes_total", "counter", "Discovery refreshes.").add(
            float(dh.refreshes), discoverer=name)
        fam("trawl_discoverer_failures_total", "counter", "Failed refreshes.").add(
            float(dh.failures), discoverer=name)
        fam("trawl_discoverer_targets", "gauge", "Targets last discovered.").add(
            float(dh.targets), discoverer=name)
        fam("trawl_discoverer_last_success_timestamp_seconds", "gauge",
            "When discovery last succeeded.").add(dh.last_success or 0.0, discoverer=name)
    for runner in host.sinks.values():
        st = runner.stats
        for field, kind, text in (
            ("points_written", "counter", "Points delivered."),
            ("batches_written", "counter", "Batches delivered."),
            ("batches_retried", "counter", "Write attempts retried."),
            ("write_errors", "counter", "Failed write attempts."),
            ("points_spooled", "counter", "Points written to the disk spool."),
            ("spool_points", "gauge", "Points waiting in the disk spool."),
            ("lines_rejected", "counter", "Lines the sink rejected."),
            ("points_dropped", "counter", "Points dropped."),
            ("queue_points", "gauge", "Points waiting in memory."),
            ("spool_bytes", "gauge", "Bytes waiting in the disk spool."),
        ):
            suffix = "_total" if kind == "counter" else ""
            fam(f"trawl_sink_{field}{suffix}", kind, text).add(
                float(getattr(st, field)), sink=runner.name)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fam("process_cpu_seconds_total", "counter", "User and system CPU time.").add(
        usage.ru_utime + usage.ru_stime)
    fam("process_resident_memory_bytes", "gauge", "Resident memory size.").add(_rss())
    fam("process_start_time_seconds", "gauge", "Start time since the epoch.").add(_START)
    try:
        fam("process_open_fds", "gauge", "Open file descriptors.").add(
            float(len(os.listdir("/proc/self/fd"))))
    except OSError:
        pass
    lines = [line for f in fams.values() for line in f.render()]
    return "\n".join(lines) + "\n"


def _rss() -> float:
    try:
        with open("/proc/self/statm") as f:
            return float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, IndexError):
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
