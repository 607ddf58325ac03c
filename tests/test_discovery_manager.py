"""The discovery side of the core: the refresh loop and the manager, in virtual time."""

from __future__ import annotations

import trawl
import trio


class Authority:
    """What a polling discoverer asks: a dict of source → addresses, which can fail."""

    def __init__(self) -> None:
        self.groups: dict[str, list[str]] = {"a": ["127.0.0.1:1"]}
        self.failing = False
        self.asked_at: list[float] = []


class PollingConfig(trawl.DiscovererConfig):
    refresh_interval: trawl.Duration = 30.0


class PollingDiscoverer(trawl.RefreshDiscoverer):
    kind = "polling"
    Config = PollingConfig
    authority: Authority

    async def refresh(self) -> list[trawl.TargetGroup]:
        self.authority.asked_at.append(trio.current_time())
        if self.authority.failing:
            raise ConnectionError("authority unreachable")
        return [trawl.group(s, [{"__address__": a} for a in addrs])
                for s, addrs in self.authority.groups.items()]


def make(authority: Authority) -> tuple[PollingDiscoverer, trawl.DiscoveryManager]:
    d = PollingDiscoverer(PollingConfig(id="p"))
    d.authority = authority
    return d, trawl.DiscoveryManager([d])


def addresses(manager: trawl.DiscoveryManager) -> list[str]:
    return sorted(t.labels["__address__"] for t in manager.snapshot("polling/p"))


async def test_refreshes_on_deadlines_without_drift(autojump_clock):
    authority = Authority()
    d, manager = make(authority)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert authority.asked_at == [0, 30, 60, 90]
    assert d.health.refreshes == 4
    assert d.health.targets == 1


async def test_failure_keeps_last_targets_backs_off_and_recovers(autojump_clock):
    authority = Authority()
    d, manager = make(authority)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        assert addresses(manager) == ["127.0.0.1:1"]
        authority.failing = True
        await trio.sleep(31)  # the refresh at 30 fails
        assert d.health.failing
        assert d.health.last_error == "authority unreachable"
        assert addresses(manager) == ["127.0.0.1:1"]
        await trio.sleep(30)
        failures = d.health.failures
        gaps = [b - a for a, b in zip(authority.asked_at[1:], authority.asked_at[2:], strict=False)]
        assert failures >= 4
        assert gaps == sorted(gaps)  # backing off
        assert all(g <= 30 * 1.2 for g in gaps)
        authority.failing = False
        authority.groups = {"a": ["127.0.0.1:2"]}
        await trio.sleep(40)
        assert not d.health.failing
        assert addresses(manager) == ["127.0.0.1:2"]
        nursery.cancel_scope.cancel()


async def test_vanished_sources_are_removed_and_unchanged_are_not_resent(autojump_clock):
    authority = Authority()
    authority.groups = {"a": ["127.0.0.1:1"], "b": ["127.0.0.1:2"]}
    _, manager = make(authority)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        assert addresses(manager) == ["127.0.0.1:1", "127.0.0.1:2"]
        version = manager.version
        await trio.sleep(31)
        assert manager.version == version  # nothing changed, nothing sent
        del authority.groups["b"]
        await trio.sleep(30)
        assert manager.version == version + 1
        assert addresses(manager) == ["127.0.0.1:1"]
        nursery.cancel_scope.cancel()


async def test_a_crashing_discoverer_does_not_take_others_down(autojump_clock):
    class Broken(trawl.Discoverer):
        kind = "broken"

        async def run(self, groups, *, task_status=trio.TASK_STATUS_IGNORED):
            raise RuntimeError("bug in a plugin")

    authority = Authority()
    good = PollingDiscoverer(PollingConfig(id="p"))
    good.authority = authority
    broken = Broken(trawl.DiscovererConfig(id="b"))
    manager = trawl.DiscoveryManager([broken, good])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        await trio.sleep(31)
        nursery.cancel_scope.cancel()
    assert broken.health.failing
    assert "bug in a plugin" in broken.health.last_error
    assert addresses(manager) == ["127.0.0.1:1"]
    assert len(authority.asked_at) == 2
