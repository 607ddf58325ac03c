"""Reload: invalid configurations are refused, valid ones restart only what changed."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import trawl
import trio
from trawl.testing import ExpositionServer

from tests.servers import free_port, wait_until

BODY = b"# TYPE m gauge\nm 1\nn 2\n"


def write_config(path: Path, port: int, targets: dict[str, list[str]], *,
                 interval_b: str = "1s", sink_path: str = "out.lp", extra: str = "") -> None:
    text = f'[http]\n  bind-address = "127.0.0.1:{port}"\n'
    for name, addresses in targets.items():
        text += (f'[[static-discovery]]\n  id = "{name}"\n  targets = {addresses!r}\n'
                 .replace("'", '"'))
    text += f"""
[[scraper]]
  name = "a"
  db = "db"
  rp = "rp"
  discoverer-service = "static-discovery"
  discoverer-id = "s1"
  scrape-interval = "500ms"
  scrape-timeout = "400ms"

[[scraper]]
  name = "b"
  db = "db"
  rp = "rp"
  discoverer-service = "static-discovery"
  discoverer-id = "s2"
  scrape-interval = "{interval_b}"
  scrape-timeout = "400ms"

[[file-sink]]
  name = "out"
  default = true
  path = "{path.parent / sink_path}"
{extra}"""
    path.write_text(text)


@asynccontextmanager
async def running(path: Path) -> AsyncIterator[trawl.Host]:
    registry = trawl.collect(trawl.get_plugin_manager())
    host = trawl.Host(trawl.load_config(path, registry), registry,
                      source=partial(trawl.load_config, path, registry))
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(host.run, handle_signals=False))
        yield host
        nursery.cancel_scope.cancel()


def loops(host: trawl.Host, scraper: str) -> dict[str, object]:
    pool = next(p for p in host.pools if p.scraper.name == scraper)
    return {dict(loop.target.labels)["instance"]: loop for loop, _ in pool.loops.values()}


async def test_invalid_config_is_refused_and_the_running_one_stays(tmp_path):
    t1, t2 = ExpositionServer(BODY).__enter__(), ExpositionServer(BODY).__enter__()
    path, port = tmp_path / "trawl.toml", free_port()
    write_config(path, port, {"s1": [t1.address], "s2": [t2.address]})
    async with running(path) as host:
        await trio.sleep(1.2)
        before = loops(host, "a")
        config = host.config
        text = path.read_text().replace('rp = "rp"', 'rp = "rp"\n  scrape-intervall = "1s"', 1)
        path.write_text(text)
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://127.0.0.1:{port}/-/reload")
        assert answer.status_code == 400
        (error,) = answer.json()["errors"]
        assert 'unknown key "scrape-intervall"' in error
        assert str(path) in error
        assert host.config is config
        assert host.reload_failures == 1
        scrapes = t1.requests
        await trio.sleep(1.1)
        assert loops(host, "a") == before
        assert t1.requests > scrapes
    t1.__exit__(None, None, None)
    t2.__exit__(None, None, None)


async def test_valid_reload_restarts_only_what_changed(tmp_path):
    servers = [ExpositionServer(BODY).__enter__() for _ in range(3)]
    t1, t2, t3 = servers
    path, port = tmp_path / "trawl.toml", free_port()
    write_config(path, port, {"s1": [t1.address], "s2": [t2.address]})
    async with running(path) as host:
        await trio.sleep(1.2)
        d1 = host.discovery.discoverers["static-discovery/s1"]
        d2 = host.discovery.discoverers["static-discovery/s2"]
        (loop_a,) = loops(host, "a").values()
        pool_a = next(p for p in host.pools if p.scraper.name == "a")
        cache_a = loop_a._cache
        sink = host.sinks["out"]
        a_times = list(t1.request_times)

        # scraper b's interval changes and its discoverer gains a target; a is untouched.
        write_config(path, port, {"s1": [t1.address], "s2": [t2.address, t3.address]},
                     interval_b="2s")
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://127.0.0.1:{port}/-/reload")
        assert answer.status_code == 200, answer.text
        assert host.discovery.discoverers["static-discovery/s1"] is d1
        assert host.discovery.discoverers["static-discovery/s2"] is not d2
        assert next(p for p in host.pools if p.scraper.name == "a") is pool_a
        assert loops(host, "a") == {t1.address: loop_a}
        assert loop_a._cache is cache_a
        assert set(loops(host, "b")) == {t2.address, t3.address}
        assert host.sinks["out"] is sink
        await trio.sleep(2.2)
        assert t3.requests >= 1
    # a's rhythm went on through the reload: every gap is the interval.
    times = [t for t in t1.request_times if t >= a_times[0]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.35 < g < 0.65 for g in gaps), gaps
    for s in servers:
        s.__exit__(None, None, None)


async def test_a_changed_sink_loses_no_point(tmp_path):
    t1, t2 = ExpositionServer(BODY).__enter__(), ExpositionServer(BODY).__enter__()
    path, port = tmp_path / "trawl.toml", free_port()
    write_config(path, port, {"s1": [t1.address], "s2": [t2.address]}, sink_path="one.lp")
    async with running(path) as host:
        await trio.sleep(1.5)
        write_config(path, port, {"s1": [t1.address], "s2": [t2.address]}, sink_path="two.lp")
        assert await host.reload() == []
        await trio.sleep(1.5)
    one = (tmp_path / "one.lp").read_text().splitlines()
    two = (tmp_path / "two.lp").read_text().splitlines()
    assert one and two
    ups = [line for line in one + two if line.startswith("up,")]
    # Every scrape's points are in one file or the other. A scrape the shutdown cut short
    # (at most one per target) was counted by its target but produced nothing.
    requests = t1.requests + t2.requests
    assert requests - 2 <= len(ups) <= requests
    assert len(one) + len(two) == 7 * len(ups)  # 2 samples + 5 synthetic series a scrape
    t1.__exit__(None, None, None)
    t2.__exit__(None, None, None)


def test_sighup_and_watch_reload_a_running_trawl(tmp_path):
    t1, t2, t3 = (ExpositionServer(BODY).__enter__() for _ in range(3))
    path, port = tmp_path / "trawl.toml", free_port()
    watch = '\n[reload]\n  watch = true\n  interval = "200ms"\n'
    write_config(path, port, {"s1": [t1.address], "s2": [t2.address]})
    with subprocess.Popen([sys.executable, "-m", "trawl", "run", "-c", str(path)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_until(lambda: t1.requests >= 1, 15, "the first scrape")
            write_config(path, port, {"s1": [t1.address, t3.address], "s2": [t2.address]},
                         extra=watch)
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: t3.requests >= 1, 10, "the target added by SIGHUP's reload")
            # now the watch is on: a change is applied without a signal
            write_config(path, port, {"s1": [t1.address], "s2": [t2.address]}, extra=watch)
            wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()
                       ["data"]["activeTargets"].__len__() == 2, 10, "the watched change")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
    assert "configuration reloaded" in stderr
    for s in (t1, t2, t3):
        s.__exit__(None, None, None)


async def test_points_spooled_by_a_failing_sink_survive_its_reload(tmp_path, monkeypatch):
    """The sink cannot write; on reload its queue goes to the spool, and its successor
    (same name, a path it can write) delivers everything from the spool."""
    monkeypatch.chdir(tmp_path)  # the default spool directory is ./trawl-spool/<sink>
    t1, t2 = ExpositionServer(BODY).__enter__(), ExpositionServer(BODY).__enter__()
    path, port = tmp_path / "trawl.toml", free_port()
    (tmp_path / "blocker").write_text("a file where the sink wants a directory")
    write_config(path, port, {"s1": [t1.address], "s2": [t2.address]},
                 sink_path="blocker/out.lp")
    async with running(path) as host:
        await trio.sleep(1.5)
        assert host.sinks["out"].stats.write_errors >= 1
        write_config(path, port, {"s1": [t1.address], "s2": [t2.address]}, sink_path="ok.lp")
        assert await host.reload() == []
        with trio.fail_after(10):
            while host.sinks["out"].stats.spool_points or host.sinks["out"].stats.queue_points:
                await trio.sleep(0.1)
        await trio.sleep(0.5)
    lines = (tmp_path / "ok.lp").read_text().splitlines()
    ups = [line for line in lines if line.startswith("up,")]
    assert len(ups) == t1.requests + t2.requests
    t1.__exit__(None, None, None)
    t2.__exit__(None, None, None)
