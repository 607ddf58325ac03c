"""The serverset discoverer against a real ZooKeeper 3.8 on a free loopback port."""

from __future__ import annotations

import functools
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
from trawl_discovery_serverset import (
    MemberError,
    ServersetConfig,
    ServersetDiscoverer,
    parse_serverset_member,
    sanitize_label_name,
)

from tests.servers import free_port
from tests.servers.prometheus import Prometheus, comparable
from tests.servers.zookeeper import EphemeralOwner, ZooKeeper

pytestmark = pytest.mark.servers

PREFIX = "__meta_serverset_"


def member(host: str = "127.0.0.1", port: int = 9100, *, status: str = "ALIVE", shard: int = 0,
           extra: dict[str, tuple[str, int]] | None = None) -> bytes:
    return json.dumps({
        "serviceEndpoint": {"host": host, "port": port},
        "additionalEndpoints": {n: {"host": h, "port": p} for n, (h, p) in (extra or {}).items()},
        "status": status, "shard": shard,
    }).encode()


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    with ZooKeeper(tmp_path_factory.mktemp("zk")) as server:
        yield server


@pytest.fixture
def zk(zookeeper: ZooKeeper) -> Iterator[Any]:
    """A kazoo client for the test's own writes (blocking: call it through `call`)."""
    client = zookeeper.client()
    yield client
    client.stop()
    client.close()


@pytest.fixture
def root() -> str:
    return f"/serversets/{uuid.uuid4().hex[:8]}"


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking kazoo call off the Trio thread."""
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def config(servers: list[str], paths: list[str], timeout: str = "10s") -> ServersetConfig:
    return ServersetConfig.model_validate(
        {"id": "zk", "servers": servers, "paths": paths, "timeout": timeout})


@asynccontextmanager
async def running(cfg: ServersetConfig
                  ) -> AsyncIterator[tuple[ServersetDiscoverer, trawl.DiscoveryManager]]:
    discoverer = ServersetDiscoverer(cfg)
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield discoverer, manager
        nursery.cancel_scope.cancel()


def targets(manager: trawl.DiscoveryManager) -> dict[str, dict[str, str]]:
    return {t.source: t.labels for t in manager.snapshot("serverset/zk")}


async def eventually(check: Callable[[], bool], what: str, within: float = 1.0) -> None:
    """Poll ``check`` until true; fail ``within`` seconds after the call."""
    deadline = trio.current_time() + within
    while not check():
        if trio.current_time() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await trio.sleep(0.01)


def registry() -> trawl.Registry:
    return trawl.collect(trawl.get_plugin_manager())


# ---------------------------------------------------------------------------- plugin, config
def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "serverset" in kinds


def test_kapacitor_section_loads_with_its_defaults():
    # Kapacitor's sample section: disabled, no servers, no paths.
    cfg = trawl.parse_config({"serverset": [{"enabled": False, "id": "myserverset",
                                             "timeout": "10s"}]}, registry())
    [(cls, c)] = cfg.discoverers
    assert cls is ServersetDiscoverer
    assert (c.enabled, c.id, c.timeout, c.servers, c.paths) == (
        False, "myserverset", 10.0, [], [])
    assert ServersetConfig(servers=["zk:2181"], paths=["/a"]).timeout == 10.0


@pytest.mark.parametrize(("section", "message"), [
    ({"id": "x", "paths": ["/a"]}, 'key "servers": at least one'),
    ({"servers": ["127.0.0.1:2181"]}, 'key "paths": at least one'),
    ({"servers": ["127.0.0.1:2181"], "paths": ["a/b"]}, "must begin with '/'"),
    ({"servers": ["127.0.0.1:2181"], "paths": ["/a/"]}, "not a ZooKeeper node path"),
    ({"servers": ["127.0.0.1:99999"], "paths": ["/a"]}, "is not a port"),
    ({"servers": ["a,b"], "paths": ["/a"]}, "is not a ZooKeeper server"),
    ({"servers": ["127.0.0.1:2181"], "paths": ["/a"], "timeout": "0s"}, "timeout"),
    ({"servers": ["127.0.0.1:2181"], "paths": ["/a"], "server": ["x"]}, 'unknown key "server"'),
])
def test_bad_config_names_the_key(section, message):
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config({"serverset": [section]}, registry(), "t.toml")
    text = "\n".join(info.value.problems)
    assert "t.toml: [[serverset]]" in text
    assert message in text


# ---------------------------------------------------------------------------- member data
def test_member_labels_as_prometheus_builds_them():
    labels = parse_serverset_member(
        member("::1", 80, status="STARTING", shard=7,
               extra={"admin-http": ("127.0.0.2", 9990), "metrics": ("h", 1)}), "/s/m")
    assert labels == {
        "__address__": "[::1]:80",
        PREFIX + "path": "/s/m",
        PREFIX + "endpoint_host": "::1",
        PREFIX + "endpoint_port": "80",
        PREFIX + "endpoint_host_admin_http": "127.0.0.2",
        PREFIX + "endpoint_port_admin_http": "9990",
        PREFIX + "endpoint_host_metrics": "h",
        PREFIX + "endpoint_port_metrics": "1",
        PREFIX + "status": "STARTING",
        PREFIX + "shard": "7",
    }


def test_member_json_is_decoded_as_go_decodes_it():
    # Keys match case-insensitively; unknown keys are ignored; missing fields are zero.
    labels = parse_serverset_member(
        b'{"SERVICEENDPOINT": {"HOST": "a", "pORt": 1}, "Status": "DEAD", "x": [1]}', "/p")
    assert (labels["__address__"], labels[PREFIX + "status"], labels[PREFIX + "shard"]) == (
        "a:1", "DEAD", "0")
    # null leaves a field zero; a repeated object key merges into the same struct.
    labels = parse_serverset_member(
        b'{"serviceEndpoint": {"host": "a"}, "serviceEndpoint": {"port": 2}, "status": null}',
        "/p")
    assert (labels["__address__"], labels[PREFIX + "status"]) == ("a:2", "")
    assert parse_serverset_member(b"null", "/p")["__address__"] == ":0"
    labels = parse_serverset_member(b'{"\xc5\xbftatus": "\\ud800", "shard": -0}', "/p")
    assert (labels[PREFIX + "status"], labels[PREFIX + "shard"]) == ("\ufffd", "0")
    assert sanitize_label_name("a.b-c/ü") == "a_b_c__"


@pytest.mark.parametrize("data", [
    b"", b"{", b"[]", b'"x"', b"NaN",
    b'{"serviceEndpoint": {"host": "a", "port": "80"}}',
    b'{"serviceEndpoint": {"host": "a", "port": 80.0}}',
    b'{"serviceEndpoint": {"host": "a", "port": 8e1}}',
    b'{"serviceEndpoint": {"host": "a", "port": 9223372036854775808}}',
    b'{"serviceEndpoint": {"host": 1, "port": 80}}',
    b'{"shard": true}',
    b'{"additionalEndpoints": {"x": 1}}',
])
def test_member_data_go_rejects_is_an_error(data):
    with pytest.raises(MemberError, match="serverset member /p"):
        parse_serverset_member(data, "/p")


# ---------------------------------------------------------------------------- watches
async def test_members_that_join_change_and_leave_show_within_a_second(zk, zookeeper, root):
    first = await call(zk.create, f"{root}/member_", member(port=1), sequence=True,
                       makepath=True)
    async with running(config([zookeeper.hosts], [root])) as (discoverer, manager):
        # The first answer is complete before the discoverer reports itself started.
        assert targets(manager) == {first: parse_serverset_member(member(port=1), first)}
        assert discoverer.health.targets == 1
        assert not discoverer.health.failing

        second = await call(zk.create, f"{root}/member_", member(port=2, shard=1),
                            ephemeral=True, sequence=True)
        await eventually(lambda: second in targets(manager), "a joining member appears")
        assert targets(manager)[second][PREFIX + "shard"] == "1"

        await call(zk.set, second, member(port=2, status="STOPPING"))
        await eventually(lambda: targets(manager)[second][PREFIX + "status"] == "STOPPING",
                         "a member's new data is seen")

        # Deeper nodes are members too, as in Prometheus (its tree cache watches all).
        nested = await call(zk.create, f"{first}/child", member(port=3))
        await eventually(lambda: nested in targets(manager), "a nested member appears")

        await call(zk.delete, first, recursive=True)
        await eventually(lambda: set(targets(manager)) == {second},
                         "a leaving member and its children go")
        await call(zk.delete, second)
        await eventually(lambda: targets(manager) == {}, "the last member goes")
        assert discoverer.health.targets == 0
        assert not discoverer.health.failing


async def test_member_whose_session_expires_goes_within_a_second(zk, zookeeper, root):
    await call(zk.ensure_path, root)
    token = trio.lowlevel.current_trio_token()
    async with running(config([zookeeper.hosts], [root])) as (_, manager):
        owner = await call(EphemeralOwner, zookeeper, f"{root}/member_", member(port=4),
                           session_timeout=1.0)
        try:
            await eventually(lambda: owner.path in targets(manager), "the member appears")
            await call(owner.kill)
            # The node stays until ZooKeeper expires the dead client's session; a watch of
            # our own tells when that happens, and trawl must follow within a second.
            gone = trio.Event()
            stat = await call(zk.exists, owner.path, watch=lambda event: (
                trio.from_thread.run_sync(gone.set, trio_token=token)))
            assert stat is not None
            with trio.fail_after(10):
                await gone.wait()
            await eventually(lambda: owner.path not in targets(manager),
                             "the expired member goes")
        finally:
            owner.kill()


async def test_path_that_does_not_exist_is_watched_for_creation(zk, zookeeper, root):
    async with running(config([zookeeper.hosts], [root, f"{root}-other"])) as (d, manager):
        assert targets(manager) == {}
        assert d.health.failing
        assert f"path {root} does not exist" in d.health.last_error

        path = await call(zk.create, f"{root}/member_", member(), sequence=True, makepath=True)
        await eventually(lambda: path in targets(manager), "a member of a new path appears")
        assert d.health.last_error == f"path {root}-other does not exist"

        await call(zk.create, f"{root}-other", b"")
        await eventually(lambda: not d.health.failing, "health recovers")

        await call(zk.delete, root, recursive=True)
        await eventually(lambda: targets(manager) == {}, "a deleted path's members go")
        await eventually(lambda: d.health.failing and d.health.last_error
                         == f"path {root} does not exist", "the deleted path is reported")


async def test_invalid_member_data_is_reported_and_keeps_the_last_good_target(zk, zookeeper,
                                                                               root):
    good = await call(zk.create, f"{root}/good", member(port=5), makepath=True)
    bad = await call(zk.create, f"{root}/bad", b"{not json")
    await call(zk.create, f"{root}/directory", b"")
    async with running(config([zookeeper.hosts], [root])) as (d, manager):
        assert set(targets(manager)) == {good}
        assert d.health.failing
        assert f"serverset member {bad}: invalid JSON" in d.health.last_error

        await call(zk.set, bad, member(port=6))
        await eventually(lambda: bad in targets(manager), "a repaired member appears")
        await eventually(lambda: not d.health.failing, "health recovers")

        # Good data turned to garbage: the last good target stays, the problem is reported.
        await call(zk.set, good, b'{"serviceEndpoint": {"host": "x", "port": "5"}}')
        await eventually(lambda: d.health.failing, "the garbage is reported")
        assert "expected an integer, got a string" in d.health.last_error
        assert targets(manager)[good]["__address__"] == "127.0.0.1:5"

        await call(zk.set, good, member(port=7))
        await eventually(lambda: targets(manager)[good]["__address__"] == "127.0.0.1:7",
                         "the repaired member's new data is seen")
        assert not d.health.failing


# ---------------------------------------------------------------------------- failures
async def test_unreadable_node_is_reported_and_retried_with_backoff(zk, zookeeper, root):
    from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

    good = await call(zk.create, f"{root}/good", member(port=1), makepath=True)
    async with running(config([zookeeper.hosts], [root])) as (d, manager):
        assert set(targets(manager)) == {good}
        # A member only its owner may read: every read of the tree fails on it (NoAuth).
        await call(zk.add_auth, "digest", "owner:secret")
        locked = await call(zk.create, f"{root}/locked", member(port=2),
                            acl=[make_digest_acl("owner", "secret", all=True)])
        await eventually(lambda: d.health.failing, "the failure is reported")
        assert "NoAuth" in d.health.last_error
        assert set(targets(manager)) == {good}  # what was read stays

        # Readable again: the next retry (after a backoff of about a second) gets it.
        await call(zk.set_acls, locked, OPEN_ACL_UNSAFE)
        await eventually(lambda: locked in targets(manager), "the retry reads the node", 5)
        assert not d.health.failing


async def test_zookeeper_restart_is_survived(tmp_path):
    root = "/restart"
    with ZooKeeper(tmp_path / "zk") as server:
        before = await call(server.client)
        try:
            first = await call(before.create, f"{root}/member_", member(port=1), sequence=True,
                               makepath=True)
        finally:
            await call(before.stop)
            await call(before.close)
        # A short session timeout bounds how long a connection attempt that lands on the
        # server while it starts up may hang (ZooKeeper accepts it, then never answers).
        async with running(config([server.hosts], [root], "4s")) as (d, manager):
            assert set(targets(manager)) == {first}

            await call(server.stop)
            await eventually(lambda: d.health.failing, "the outage is reported", 5)
            assert "lost the connection to ZooKeeper" in d.health.last_error
            assert set(targets(manager)) == {first}  # the last good targets stay

            await call(server.start)
            await eventually(lambda: not d.health.failing, "the discoverer reconnects", 15)
            assert set(targets(manager)) == {first}

            # Watches are armed again: changes show within a second, as before.
            after = await call(server.client)
            try:
                second = await call(after.create, f"{root}/member_", member(port=2),
                                    ephemeral=True, sequence=True)
                await eventually(lambda: second in targets(manager), "a new member appears")
                await call(after.delete, first)
                await eventually(lambda: set(targets(manager)) == {second},
                                 "a leaving member goes")
            finally:
                await call(after.stop)
                await call(after.close)


async def test_unreachable_or_garbage_authority_keeps_targets_and_recovers(tmp_path):
    port = free_port()
    root = "/late"
    gaps: list[float] = []
    garbage_connections = 0

    async def heartbeat() -> None:
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    async def garbage(stream: trio.SocketStream) -> None:
        nonlocal garbage_connections
        garbage_connections += 1
        with trio.move_on_after(2):
            await stream.receive_some(4096)
            await stream.send_all(b"\x00\x00\x00\x10HTTP/1.1 400 Bad")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat)
        started = trio.current_time()
        async with running(config([f"127.0.0.1:{port}"], [root], "2s")) as (d, manager):
            # Nobody listens: started after the first attempt (bounded by the timeout).
            assert trio.current_time() - started < 5
            assert d.health.failing
            assert "cannot connect to ZooKeeper" in d.health.last_error
            assert targets(manager) == {}

            server = ZooKeeper(tmp_path / "zk", port=port)
            await call(server.start)
            try:
                client = await call(server.client)
                try:
                    first = await call(client.create, f"{root}/member_", member(port=8),
                                       sequence=True, makepath=True)
                finally:
                    await call(client.stop)
                    await call(client.close)
                await eventually(lambda: first in targets(manager),
                                 "targets once ZooKeeper is there", 10)
                await eventually(lambda: not d.health.failing, "health recovers")

                # ZooKeeper goes; something else answers garbage on its port.
                await call(server.stop)
                async with trio.open_nursery() as impostor:
                    await impostor.start(
                        functools.partial(trio.serve_tcp, garbage, port, host="127.0.0.1"))
                    await eventually(lambda: garbage_connections >= 2,
                                     "kazoo tries the impostor twice", 10)
                    assert d.health.failing
                    assert set(targets(manager)) == {first}  # the last good targets stay
                    impostor.cancel_scope.cancel()

                await call(server.start)
                await eventually(lambda: not d.health.failing, "health recovers again", 15)
                client = await call(server.client)
                try:
                    second = await call(client.create, f"{root}/member_", member(port=9),
                                        ephemeral=True, sequence=True)
                    await eventually(lambda: set(targets(manager)) == {first, second},
                                     "changes are seen again")
                finally:
                    await call(client.stop)
                    await call(client.close)
            finally:
                await call(server.stop)
        nursery.cancel_scope.cancel()
    # kazoo's connection attempts, reads and shutdown all ran off the Trio thread: the loop
    # kept ticking (a blocking call would stall it for the 2 s connect timeout).
    assert max(gaps) < 1.0


# ---------------------------------------------------------------------------- the reference
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
    zk.create(root, member("127.0.0.9", 1), makepath=True)  # the path's own node is a member
    for i, (status, shard) in enumerate([("ALIVE", 0), ("DEAD", 1), ("STARTING", 2)]):
        zk.create(f"{root}/member_", member(port=9100 + i, status=status, shard=shard,
                                            extra={"metrics": ("127.0.0.1", 9200 + i),
                                                   "admin-http": ("::1", 9990)}),
                  ephemeral=True, sequence=True)
    zk.create(f"{root}/v6", member("::1", 9300, extra={"ünï.code": ("h", 1)}))
    zk.create(f"{root}/v6/nested", member("127.0.0.2", 9301))
    zk.create(f"{root}/caps", b'{"ServiceEndpoint": {"Host": "127.0.0.3", "PORT": 7}, '
                              b'"Status": "ALIVE", "SHARD": -3, "extra": {"a": 1}}')
    # Go's case folding knows the long s (U+017F); Go makes a lone surrogate U+FFFD.
    zk.create(f"{root}/folding", b'{"serviceEndpoint": {"host": "127.0.0.5", "port": 5}, '
                                 b'"\xc5\xbftatus": "LONG", "shard": -0}')
    zk.create(f"{root}/surrogate", b'{"serviceEndpoint": {"host": "127.0.0.6", "port": 6}, '
                                   b'"status": "a\\ud800b\\ud83d\\ude00"}')
    zk.create(f"{root}/zeros", b"{}")
    zk.create(f"{root}/null", b"null")
    for name, data in [("dir", b""), ("garbage", b"not json"), ("strport", b'{"shard": "1"}'),
                       ("float", b'{"serviceEndpoint": {"port": 1.5}}')]:
        zk.create(f"{root}/{name}", data)
    zk.create(f"{other}/only", member("127.0.0.4", 1), makepath=True)

    ours = discover_once(tmp_path, f"""
[[serverset]]
  id = "ref"
  servers = ["{zookeeper.hosts}"]
  paths = ["{root}", "{other}"]
  timeout = "10s"
""")
    assert len(ours) == 12
    assert {o["source"] for o in ours} == {o["labels"][PREFIX + "path"] for o in ours}

    job = {"job_name": "serverset", "serverset_sd_configs": [
        {"servers": [zookeeper.hosts], "paths": [root, other], "timeout": "10s"}]}
    with Prometheus(tmp_path / "prom", [job]) as prometheus:
        try:
            prometheus.wait_discovered("serverset", len(ours), timeout=30)
        except TimeoutError:
            pass  # the comparison below shows the difference
        theirs = [comparable(t) for t in prometheus.discovered("serverset")]
    key = lambda labels: sorted(labels.items())  # noqa: E731
    assert sorted((o["labels"] for o in ours), key=key) == sorted(theirs, key=key)
