"""Scrape scheduling in virtual time: offsets, no drift, isolation, reconciliation."""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import pytest
import trawl
import trio
import trio.testing
from trawl._scrape import build_target, target_offset
from trawl.testing import MemorySink, StaticTestDiscoverer, make_registry

BODY = b"metric 1\n"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps once the loop has idled 20 ms of real time.

    The targets are real sockets: a jump at the first idle instant could overtake a reply
    that the kernel has not handed over yet on a busy machine.
    """
    return trio.testing.MockClock(autojump_threshold=0.02)


def exactly(times: list[float]) -> object:
    return pytest.approx(times, abs=1e-9)


class Targets:
    """In-process Trio HTTP targets that record the virtual time of every request."""

    def __init__(self) -> None:
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.hang: set[str] = set()

    async def serve(self, nursery: trio.Nursery) -> str:
        address = ""

        async def handle(stream: trio.SocketStream) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            self.hits[address].append(trio.current_time())
            if address in self.hang:
                await trio.sleep_forever()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"
                                  b"\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))

        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        return address


def config(interval: str = "10s", timeout: str = "5s") -> trawl.Config:
    return trawl.parse_config({
        "test-discovery": [{"id": "t"}],
        "scraper": [{"name": "job", "db": "db", "rp": "rp", "scrape-interval": interval,
                     "scrape-timeout": timeout, "discoverer-service": "test-discovery",
                     "discoverer-id": "t"}],
        "memory-sink": [{"name": "mem", "default": True}],
    }, make_registry(), "<test>")


def offset_of(address: str, cfg: trawl.Config, labels: dict[str, str] | None = None) -> float:
    target, _ = build_target({"__address__": address, **(labels or {})}, cfg.scrapers[0])
    assert target is not None
    return target_offset(target, cfg.scrapers[0].scrape_interval)


async def test_targets_start_at_hashed_offsets_and_never_drift(clock):
    cfg = config()
    targets = Targets()
    async with trio.open_nursery() as nursery:
        addresses = [await targets.serve(nursery) for _ in range(3)]
        StaticTestDiscoverer.preset("t", addresses)
        host = trawl.Host(cfg, make_registry())
        await nursery.start(partial(host.run, handle_signals=False))
        await trio.sleep(45)
        nursery.cancel_scope.cancel()
    offsets = [offset_of(a, cfg) for a in addresses]
    assert len(set(offsets)) == 3  # spread over the interval
    for address, offset in zip(addresses, offsets, strict=True):
        assert targets.hits[address] == exactly(
            [offset + k * 10 for k in range(5) if offset + k * 10 < 45])


async def test_a_hanging_target_delays_no_other(clock):
    cfg = config()
    targets = Targets()
    async with trio.open_nursery() as nursery:
        slow, fast = await targets.serve(nursery), await targets.serve(nursery)
        targets.hang.add(slow)
        StaticTestDiscoverer.preset("t", [slow, fast])
        host = trawl.Host(cfg, make_registry())
        await nursery.start(partial(host.run, handle_signals=False))
        await trio.sleep(40)
        nursery.cancel_scope.cancel()
    for address in (slow, fast):
        offset = offset_of(address, cfg)
        assert targets.hits[address] == exactly([offset + k * 10 for k in range(4)])
    (pool,) = host.pools
    healths = {dict(loop.target.labels)["instance"]: loop.health for loop, _ in pool.loops.values()}
    assert healths[slow].health == "down"
    assert healths[slow].last_error == "scrape timed out after 5s"
    assert healths[fast].health == "up"


async def test_discovery_updates_keep_unchanged_targets_rhythm(clock):
    cfg = config()
    targets = Targets()
    MemorySink.written.clear()
    async with trio.open_nursery() as nursery:
        a, b, c = [await targets.serve(nursery) for _ in range(3)]
        StaticTestDiscoverer.preset("t", [a, b])
        host = trawl.Host(cfg, make_registry())
        await nursery.start(partial(host.run, handle_signals=False))
        await trio.sleep(25)
        await StaticTestDiscoverer.set("t", [a, c])  # b goes, c comes, a stays
        await trio.sleep(20)
        await StaticTestDiscoverer.set("t", [a, c], {"team": "x"})  # labels change: restart
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    def rhythm(offset: float, start: float, end: float) -> object:
        return exactly([t for t in (offset + k * 10 for k in range(8)) if start <= t < end])

    oa, ob, oc = offset_of(a, cfg), offset_of(b, cfg), offset_of(c, cfg)
    oa2, oc2 = offset_of(a, cfg, {"team": "x"}), offset_of(c, cfg, {"team": "x"})
    hits = targets.hits
    # a is untouched by the first update: one rhythm from 0 to 45 s.
    assert [t for t in hits[a] if t < 45] == rhythm(oa, 0, 45)
    assert hits[b] == rhythm(ob, 0, 25)  # b stops at 25 s
    assert [t for t in hits[c] if t < 45] == rhythm(oc, 25, 45)  # c starts at 25 s
    # At 45 s every target's labels change: each loop restarts at its new label hash's phase.
    assert [t for t in hits[a] if t >= 45] == rhythm(oa2, 45, 65)
    assert [t for t in hits[c] if t >= 45] == rhythm(oc2, 45, 65)
    ups = [line for line in MemorySink.lines("mem") if line.startswith("up,")]
    assert any(",team=x " in line for line in ups)
