"""The nerve discoverer against a real ZooKeeper 3.8 on a free loopback port.

The ZooKeeper watching is the serverset distribution's `TreeWatcher`, whose failure cases
(unreachable or garbage servers, unreadable nodes, missing paths) are tested there; here:
nerve's data and labels, members that join, leave and die, a ZooKeeper restart, and the same
answers as Prometheus.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trawl
import trio
from trawl_discovery_nerve import NerveConfig, NerveDiscoverer, parse_nerve_member
from trawl_discovery_serverset import MemberError, TreeWatcher

from tests.servers.prometheus import Prometheus, comparable
from tests.servers.zookeeper import EphemeralOwner, ZooKeeper

pytestmark = pytest.mark.servers

PREFIX = "__meta_nerve_"


def member(host: str = "127.0.0.1", port: int = 9100, name: str = "node") -> bytes:
    return json.dumps({"host": host, "port": port, "name": name, "weight": 1}).encode()


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    with ZooKeeper(tmp_path_factory.mktemp("zk")) as server:
        yield server


@pytest.fixture
def zk(zookeeper: ZooKeeper) -> Iterator[Any]:
    client = zookeeper.client()
    yield client
    client.stop()
    client.close()


@pytest.fixture
def root() -> str:
    return f"/nerve/services/{uuid.uuid4().hex[:8]}/services"


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


@asynccontextmanager
async def running(servers: list[str], paths: list[str]
                  ) -> AsyncIterator[tuple[NerveDiscoverer, trawl.DiscoveryManager]]:
    discoverer = NerveDiscoverer(NerveConfig(id="zk", servers=servers, paths=paths))
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield discoverer, manager
        nursery.cancel_scope.cancel()


def targets(manager: trawl.DiscoveryManager) -> dict[str, dict[str, str]]:
    return {t.source: t.labels for t in manager.snapshot("nerve/zk")}


async def eventually(check: Callable[[], bool], what: str, within: float = 1.0) -> None:
    deadline = trio.current_time() + within
    while not check():
        if trio.current_time() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await trio.sleep(0.01)


def registry() -> trawl.Registry:
    return trawl.collect(trawl.get_plugin_manager())


def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "nerve" in kinds


def test_shares_the_serverset_tree_watcher():
    discoverer = NerveDiscoverer(NerveConfig(servers=["127.0.0.1:2181"], paths=["/a"]))
    assert isinstance(discoverer.watcher, TreeWatcher)


def test_kapacitor_section_loads_with_its_defaults():
    cfg = trawl.parse_config({"nerve": [{"enabled": False, "id": "mynerve",
                                         "timeout": "10s"}]}, registry())
    [(cls, c)] = cfg.discoverers
    assert cls is NerveDiscoverer
    assert (c.enabled, c.id, c.timeout, c.servers, c.paths) == (False, "mynerve", 10.0, [], [])


@pytest.mark.parametrize(("section", "message"), [
    ({"paths": ["/a"]}, 'key "servers": at least one'),
    ({"servers": ["127.0.0.1:2181"], "paths": ["nerve"]}, "must begin with '/'"),
    ({"servers": ["127.0.0.1:2181"], "paths": ["/a"], "timeout": "ten"}, "timeout"),
])
def test_bad_config_names_the_key(section, message):
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config({"nerve": [section]}, registry(), "t.toml")
    text = "\n".join(info.value.problems)
    assert "t.toml: [[nerve]]" in text
    assert message in text


def test_member_labels_as_prometheus_builds_them():
    assert parse_nerve_member(member("::1", 8080, "web-1"), "/n/web-1_0001") == {
        "__address__": "[::1]:8080",
        PREFIX + "path": "/n/web-1_0001",
        PREFIX + "endpoint_host": "::1",
        PREFIX + "endpoint_port": "8080",
        PREFIX + "endpoint_name": "web-1",
    }
    # Go's decoding: keys match case-insensitively, missing fields are zero.
    assert parse_nerve_member(b'{"HOST": "h", "Port": 1}', "/p")[PREFIX + "endpoint_name"] == ""
    for bad in (b"", b"x", b'{"port": "80"}', b'{"port": 80.5}', b'{"name": 3}', b"[1]"):
        with pytest.raises(MemberError, match="nerve member /p"):
            parse_nerve_member(bad, "/p")


async def test_members_that_join_leave_and_die_show_within_a_second(zk, zookeeper, root):
    first = await call(zk.create, f"{root}/web_", member(port=1, name="a"), ephemeral=True,
                       sequence=True, makepath=True)
    token = trio.lowlevel.current_trio_token()
    async with running([zookeeper.hosts], [root]) as (d, manager):
        assert set(targets(manager)) == {first}
        assert targets(manager)[first][PREFIX + "endpoint_name"] == "a"

        owner = await call(EphemeralOwner, zookeeper, f"{root}/web_", member(port=2, name="b"),
                           session_timeout=1.0)
        try:
            await eventually(lambda: owner.path in targets(manager), "a joining member appears")

            await call(zk.delete, first)
            await eventually(lambda: set(targets(manager)) == {owner.path},
                             "a leaving member goes")

            # The owner dies; ZooKeeper expires its session a second later and deletes the
            # node. From that moment trawl has a second.
            gone = trio.Event()
            stat = await call(zk.exists, owner.path, watch=lambda event: (
                trio.from_thread.run_sync(gone.set, trio_token=token)))
            assert stat is not None
            await call(owner.kill)
            with trio.fail_after(10):
                await gone.wait()
            await eventually(lambda: targets(manager) == {}, "the dead member goes")
        finally:
            owner.kill()
        assert not d.health.failing


async def test_zookeeper_restart_is_survived(tmp_path):
    root = "/nerve/services/restart/services"
    with ZooKeeper(tmp_path / "zk") as server:
        client = await call(server.client)
        try:
            first = await call(client.create, f"{root}/web_", member(port=1), sequence=True,
                               makepath=True)
        finally:
            await call(client.stop)
            await call(client.close)
        discoverer = NerveDiscoverer(NerveConfig(id="zk", servers=[server.hosts], paths=[root],
                                                 timeout=4.0))
        manager = trawl.DiscoveryManager([discoverer])
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            assert set(targets(manager)) == {first}
            await call(server.restart)
            await eventually(lambda: not discoverer.health.failing and
                             discoverer.health.failures > 0, "the discoverer reconnects", 15)
            assert set(targets(manager)) == {first}
            client = await call(server.client)
            try:
                second = await call(client.create, f"{root}/web_", member(port=2),
                                    ephemeral=True, sequence=True)
                await eventually(lambda: set(targets(manager)) == {first, second},
                                 "a member that joins after the restart appears")
            finally:
                await call(client.stop)
                await call(client.close)
            nursery.cancel_scope.cancel()


def discover_once(tmp_path: Path, toml: str) -> list[dict[str, Any]]:
    path = tmp_path / "trawl.toml"
    path.write_text(toml)
    trawl_script = Path(sys.executable).with_name("trawl")  # .venv/bin/trawl
    proc = subprocess.run([str(trawl_script), "discover", "-c", str(path), "--once"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_same_answers_as_prometheus(zk, zookeeper, root, tmp_path):
    other = f"{root}-b"
    for i, name in enumerate(["web-1", "web-2", ""]):
        zk.create(f"{root}/{name or 'anon'}_", member(port=9100 + i, name=name),
                  ephemeral=True, sequence=True, makepath=True)
    zk.create(f"{root}/v6", member("::1", 9200, "v6"))
    zk.create(f"{root}/v6/deeper", member("127.0.0.2", 9201, "deeper"))
    zk.create(f"{root}/caps", b'{"Host": "127.0.0.3", "PORT": 7, "Name": "caps"}')
    zk.create(f"{root}/zeros", b"{}")
    for name, data in [("dir", b""), ("garbage", b"{"), ("strport", b'{"port": "1"}')]:
        zk.create(f"{root}/{name}", data)
    zk.create(f"{other}/only", member("127.0.0.4", 1, "only"), makepath=True)

    ours = discover_once(tmp_path, f"""
[[nerve]]
  id = "ref"
  servers = ["{zookeeper.hosts}"]
  paths = ["{root}", "{other}"]
  timeout = "10s"
""")
    assert len(ours) == 8
    assert all(o["discoverer"] == "nerve/ref" for o in ours)

    job = {"job_name": "nerve", "nerve_sd_configs": [
        {"servers": [zookeeper.hosts], "paths": [root, other], "timeout": "10s"}]}
    with Prometheus(tmp_path / "prom", [job]) as prometheus:
        try:
            prometheus.wait_discovered("nerve", len(ours), timeout=30)
        except TimeoutError:
            pass  # the comparison below shows the difference
        theirs = [comparable(t) for t in prometheus.discovered("nerve")]
    key = lambda labels: sorted(labels.items())  # noqa: E731
    assert sorted((o["labels"] for o in ours), key=key) == sorted(theirs, key=key)
