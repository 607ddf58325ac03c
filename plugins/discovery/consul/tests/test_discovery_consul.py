"""The Consul discoverer against the Consul API simulator (and vmagent 1.79 as reference)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trawl
import trio
import trustme
from trawl_discovery_consul import ConsulConfig, ConsulDiscoverer
from trawl_discovery_consul._discoverer import (
    aggregated_status,
    next_index,
    sanitize_label_name,
)

from tests.servers import free_port
from tests.servers.prometheus import VMAgent, comparable
from tests.simulators.consul import ConsulSimulator

REPO = Path(__file__).resolve().parents[4]
TRAWL = str(Path(sys.executable).with_name("trawl"))
KAPACITOR_CONF = Path(__file__).resolve().parents[4] / "tests" / "data" / "kapacitor.conf"


# ---------------------------------------------------------------------- helpers
@pytest.fixture
def sim() -> Iterator[ConsulSimulator]:
    with ConsulSimulator() as s:
        yield s


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def populate(sim: ConsulSimulator) -> None:
    """A small but varied catalog: meta with odd keys, health states, addresses, tags."""
    sim.add_node("web-1", "127.0.0.2", meta={"rack": "r1", "os-name": "linux",
                                              "consul-network-segment": ""})
    sim.add_node("web-2", "127.0.0.3", meta={"rack": "r2"},
                 tagged_addresses={"lan": "127.0.0.3", "wan": "127.0.1.3"})
    sim.add_node("db-1", "::1", meta={"rack": "r1", "role": "db"})
    sim.register("web", node="web-1", port=8080, id="web-a", tags=["prod", "v1"],
                 meta={"version": "1.2", "team.name": "edge"})
    sim.register("web", node="web-2", port=8080, id="web-b", tags=["prod", "v2"],
                 status="warning")
    sim.register("web", node="web-2", port=8081, id="web-c", address="127.0.0.4",
                 tags=["canary"], status="critical")
    sim.register("db", node="db-1", port=5432, id="db-primary", tags=["primary"])
    sim.register("db", node="web-1", port=5433, id="db-replica", address="::1",
                 tags=["replica"], meta={"lag": "0"})
    sim.register("cache", node="web-2", port=6379, id="cache-1", tags=["prod"])
    sim.set_maintenance("cache-1", True)
    sim.register("billing", node="web-1", port=9000, id="billing-1", namespace="finance",
                 tags=["prod"])


def populate_generated(sim: ConsulSimulator, services: int, seed: int = 7) -> int:
    """Many services with varied, awkward values; returns the number of instances."""
    rng = random.Random(seed)
    for n in range(8):
        sim.add_node(f"gen-node-{n}", f"127.0.2.{n + 1}",
                     meta={f"k{n % 3}": f"v{n}", "zone.name": rng.choice(["a", "b", "ü-3"])})
    count = 0
    for s in range(services):
        for i in range(rng.randint(1, 4)):
            tags = rng.sample(["prod", "canary", "a,b", "x=y", "team:core", ""], rng.randint(0, 3))
            sim.register(f"gen-{s}", node=f"gen-node-{rng.randrange(8)}", id=f"gen-{s}-{i}",
                         port=rng.choice([0, 80, 9100, 65535]),
                         address=rng.choice(["", "", "127.0.3.1", "::1", "localhost"]),
                         tags=tags, meta={rng.choice(["a-b", "c.d", "e"]): str(rng.random())},
                         status=rng.choice(["passing", "warning", "critical"]))
            if rng.random() < 0.1:
                sim.set_maintenance(f"gen-{s}-{i}", True)
            count += 1
    return count


def by_id(targets: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {t["__meta_consul_service_id"]: t for t in targets}


def labels_of(manager: trawl.DiscoveryManager, name: str) -> list[dict[str, str]]:
    return [dict(t.labels) for t in manager.snapshot(name)]


@contextlib.asynccontextmanager
async def discovering(**config: Any) -> AsyncIterator[tuple[ConsulDiscoverer,
                                                            trawl.DiscoveryManager]]:
    discoverer = ConsulDiscoverer(ConsulConfig(id="t", **config))
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(manager.run)
        yield discoverer, manager
        nursery.cancel_scope.cancel()


async def wait_for(manager: trawl.DiscoveryManager, check: Callable[[], bool],
                   within: float) -> float:
    """Wait until ``check()`` holds after some update; return how long it took."""
    start = trio.current_time()
    with trio.fail_after(within):
        version = manager.version
        while not check():
            version = await manager.wait_changed(version)
    return trio.current_time() - start


async def poll(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Check every 20 ms until ``check()`` holds; fail after ``seconds``."""
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await trio.sleep(0.02)
    raise AssertionError(f"no {what} within {seconds:g}s")


async def wait_blocked(sim: ConsulSimulator, count: int) -> None:
    """Wait until ``count`` blocking queries (``index=`` > 0) have been sent."""
    await poll(lambda: sum("index=" in r and "index=0" not in r for r in sim.requests)
               >= count, 5, f"{count} blocking queries")


# ---------------------------------------------------------------------- registration, config
def test_plugin_is_registered() -> None:
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "consul" in kinds


def _registry() -> trawl.Registry:
    import trawl_discovery_consul

    pm = trawl.get_plugin_manager(load_entrypoints=False, plugins=[trawl_discovery_consul])
    return trawl.collect(pm)


def test_kapacitor_section_loads_with_its_defaults() -> None:
    section = tomllib.loads(KAPACITOR_CONF.read_text())["consul"]
    config = trawl.parse_config({"consul": section}, _registry())
    [(cls, c)] = config.discoverers
    assert cls is ConsulDiscoverer
    assert (c.id, c.enabled, c.address, c.tag_separator, c.scheme) == (
        "myconsul", False, "127.0.0.1:8500", ",", "http")
    assert c.base_url == "http://127.0.0.1:8500"
    assert c.allow_stale
    assert c.refresh_interval == 1.0
    assert c.services == []


def test_every_key_and_secrets_stay_secret() -> None:
    config = trawl.parse_config({"consul": [{
        "id": "c", "address": "consul.test:8501", "token": "tok-123", "datacenter": "dc2",
        "tag-separator": "|", "scheme": "https", "username": "u", "password": "pw-456",
        "services": ["web"], "tags": ["prod"], "node-meta": {"rack": "r1"},
        "allow-stale": False, "refresh-interval": "2s", "namespace": "ns1",
        "partition": "p1", "ssl-ca": "/ca.pem", "ssl-cert": "/c.pem", "ssl-key": "/k.pem",
        "ssl-server-name": "consul.test", "insecure-skip-verify": True,
    }]}, _registry())
    [(_, c)] = config.discoverers
    assert c.base_url == "https://consul.test:8501"
    assert c.node_meta == {"rack": "r1"}
    assert c.refresh_interval == 2.0
    text = repr(c) + str(c.model_dump(by_alias=True, mode="json"))
    assert "tok-123" not in text
    assert "pw-456" not in text


@pytest.mark.parametrize(("entry", "message"), [
    ({"scheme": "ftp"}, "scheme"),
    ({"address": "127.0.0.1:8500/v1"}, "not a host:port"),
    ({"address": "gopher://x:1"}, "http or https"),
    ({"ssl-cert": "/c.pem"}, "ssl-cert and ssl-key"),
    ({"refresh-interval": "-1s"}, "negative"),
    ({"tag_seperator": ","}, "tag_seperator"),
    ({"node-meta": {"rack": 1}}, "node-meta"),
])
def test_bad_keys_are_named(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(trawl.ConfigError) as err:
        trawl.parse_config({"consul": [{"id": "c", **entry}]}, _registry(), "x.toml")
    text = str(err.value)
    assert "x.toml" in text
    assert "consul" in text
    assert message in text


def test_label_helpers() -> None:
    assert sanitize_label_name("team.name-x") == "team_name_x"
    assert aggregated_status([]) == "passing"
    assert aggregated_status([{"CheckID": "a", "Status": "passing"},
                              {"CheckID": "b", "Status": "warning"}]) == "warning"
    assert aggregated_status([{"CheckID": "_node_maintenance", "Status": "critical"},
                              {"CheckID": "b", "Status": "passing"}]) == "maintenance"
    assert aggregated_status([{"CheckID": "b", "Status": "bogus"}]) == ""
    assert next_index(10, 12) == 12
    assert next_index(10, 3) == 0
    assert next_index(0, 0) == 1


# ---------------------------------------------------------------------- labels and filters
async def test_labels_as_prometheus_makes_them(sim: ConsulSimulator) -> None:
    populate(sim)
    async with discovering(address=sim.address, namespace="*") as (d, manager):
        targets = by_id(labels_of(manager, d.name))
    assert set(targets) == {"consul", "web-a", "web-b", "web-c", "db-primary", "db-replica",
                            "cache-1", "billing-1"}
    assert targets["web-a"] == {
        "__address__": "127.0.0.2:8080",
        "__meta_consul_address": "127.0.0.2",
        "__meta_consul_dc": "dc1",
        "__meta_consul_health": "passing",
        "__meta_consul_metadata_os_name": "linux",
        "__meta_consul_metadata_rack": "r1",
        "__meta_consul_namespace": "default",
        "__meta_consul_node": "web-1",
        "__meta_consul_partition": "default",
        "__meta_consul_service": "web",
        "__meta_consul_service_id": "web-a",
        "__meta_consul_service_metadata_team_name": "edge",
        "__meta_consul_service_metadata_version": "1.2",
        "__meta_consul_service_port": "8080",
        "__meta_consul_tagged_address_lan": "127.0.0.2",
        "__meta_consul_tagged_address_lan_ipv4": "127.0.0.2",
        "__meta_consul_tagged_address_wan": "127.0.0.2",
        "__meta_consul_tagged_address_wan_ipv4": "127.0.0.2",
        "__meta_consul_tags": ",prod,v1,",
    }
    assert targets["web-b"]["__meta_consul_health"] == "warning"
    assert targets["web-b"]["__meta_consul_tagged_address_wan"] == "127.0.1.3"
    assert targets["web-c"]["__address__"] == "127.0.0.4:8081"
    assert targets["web-c"]["__meta_consul_service_address"] == "127.0.0.4"
    assert targets["web-c"]["__meta_consul_health"] == "critical"
    assert targets["db-primary"]["__address__"] == "[::1]:5432"
    assert targets["db-replica"]["__address__"] == "[::1]:5433"
    assert targets["db-replica"]["__meta_consul_address"] == "127.0.0.2"
    assert targets["cache-1"]["__meta_consul_health"] == "maintenance"
    assert targets["billing-1"]["__meta_consul_namespace"] == "finance"
    assert targets["consul"]["__meta_consul_tags"] == ",,"
    assert d.health.targets == 8
    assert not d.health.failing


async def test_filters_and_query_parameters(sim: ConsulSimulator) -> None:
    populate(sim)
    sim.register("web", node="db-1", port=8080, id="web-d", tags=["prod", "v3"])
    async with discovering(address=sim.address, services=["web", "db", "cache"],
                           tags=["prod"], node_meta={"rack": "r1"}, allow_stale=False,
                           datacenter="dc1", tag_separator="|") as (d, manager):
        targets = by_id(labels_of(manager, d.name))
    # cache has the tag but its node is in rack r2; db's instances lack the tag.
    assert set(targets) == {"web-a", "web-d"}
    assert targets["web-a"]["__meta_consul_tags"] == "|prod|v1|"
    health = [r for r in sim.requests if r.startswith("/v1/health/service/web?")]
    assert health[0] == "/v1/health/service/web?dc=dc1&node-meta=rack%3Ar1&tag=prod"
    assert not any("stale" in r for r in sim.requests)
    assert not any(r.startswith("/v1/agent/self") for r in sim.requests)
    assert not any("/v1/health/service/cache" in r for r in sim.requests)


async def test_namespace_and_partition_are_scopes(sim: ConsulSimulator) -> None:
    populate(sim)
    sim.add_node("p-node", "127.0.0.5", partition="team-b")
    sim.register("web", node="p-node", port=80, id="web-p", partition="team-b",
                 namespace="ops")
    async with discovering(address=sim.address, namespace="finance") as (d, manager):
        assert {t["__meta_consul_service_id"] for t in labels_of(manager, d.name)} == {
            "billing-1"}
    async with discovering(address=sim.address, namespace="ops",
                           partition="team-b") as (d, manager):
        [target] = labels_of(manager, d.name)
    assert target["__meta_consul_partition"] == "team-b"
    assert target["__meta_consul_namespace"] == "ops"
    assert any("ns=ops&partition=team-b" in r for r in sim.requests)


async def test_oss_consul_leaves_namespace_and_partition_empty() -> None:
    with ConsulSimulator(enterprise=False) as sim:
        async with discovering(address=sim.address) as (d, manager):
            [target] = labels_of(manager, d.name)
    # Empty values make no label, as in Prometheus.
    assert "__meta_consul_namespace" not in target
    assert "__meta_consul_partition" not in target
    assert "__meta_consul_service_address" not in target


# ---------------------------------------------------------------------- blocking queries
async def test_changes_arrive_within_a_second_by_blocking_queries(
        sim: ConsulSimulator) -> None:
    populate(sim)
    async with discovering(address=sim.address, namespace="*") as (d, manager):
        # The catalog and each of the 5 services wait in a blocking query.
        await wait_blocked(sim, 6)
        asked = len(sim.requests)
        await trio.sleep(1.5)
        assert len(sim.requests) == asked, "idle watchers must wait, not poll"

        sim.update("web-a", port=9090, tags=["prod", "v9"])
        took = await wait_for(manager, lambda: by_id(labels_of(manager, d.name))["web-a"][
            "__address__"] == "127.0.0.2:9090", within=1.0)
        assert by_id(labels_of(manager, d.name))["web-a"]["__meta_consul_tags"] == ",prod,v9,"
        logging.getLogger(__name__).info("change seen after %.3fs", took)

        # The next changes come within refresh-interval (1 s) of the last answer, so they
        # may wait for it.
        sim.set_check("web-b", "critical")
        await wait_for(manager, lambda: by_id(labels_of(manager, d.name))["web-b"][
            "__meta_consul_health"] == "critical", within=2.5)
        sim.set_node_meta("web-1", {"rack": "r9"})
        await wait_for(manager, lambda: by_id(labels_of(manager, d.name))["web-a"].get(
            "__meta_consul_metadata_rack") == "r9", within=2.5)

        # A new service gets a watcher; a vanished one takes its targets along.
        sim.register("queue", node="web-1", port=5672, id="queue-1")
        await wait_for(manager, lambda: "queue-1" in by_id(labels_of(manager, d.name)),
                       within=2.5)
        sim.deregister("db-primary")
        sim.deregister("db-replica")
        await wait_for(manager, lambda: not any(
            t["__meta_consul_service"] == "db" for t in labels_of(manager, d.name)),
            within=2.5)
        assert not d.health.failing


async def test_authority_failure_keeps_targets_backs_off_and_recovers(
        sim: ConsulSimulator, caplog: pytest.LogCaptureFixture) -> None:
    populate(sim)
    async with discovering(address=sim.address) as (d, manager):
        before = labels_of(manager, d.name)
        await wait_blocked(sim, 5)
        asked = len(sim.requests)
        sim.fail_with(500, "rpc error making call: No cluster leader")
        await poll(lambda: d.health.failing, 3, "failure reported")
        assert "No cluster leader" in d.health.last_error
        await trio.sleep(2.5)
        # Kept, and retried with backoff: 5 watchers, at most 3 tries each in ~2.5 s.
        assert labels_of(manager, d.name) == before
        assert d.health.targets == len(before)
        assert len(sim.requests) - asked <= 5 * 3
        sim.update("web-a", port=9091)
        sim.fail_with(None)
        await wait_for(manager, lambda: by_id(labels_of(manager, d.name))["web-a"][
            "__address__"] == "127.0.0.2:9091", within=8)
        await poll(lambda: not d.health.failing, 8, "recovery")
    assert caplog.text.count("keeping the last good targets") == 1
    assert caplog.text.count("recovered") == 1


async def test_unreachable_consul_is_reported_and_started() -> None:
    port = free_port()
    async with discovering(address=f"127.0.0.1:{port}") as (d, manager):
        assert d.health.failing
        assert "datacenter" in d.health.last_error
        assert "ConnectError" in d.health.last_error
        assert labels_of(manager, d.name) == []


async def test_consul_on_ipv6_loopback() -> None:
    with ConsulSimulator(host="::1") as sim:
        assert sim.address.startswith("[::1]:")
        async with discovering(address=sim.address) as (d, manager):
            [target] = labels_of(manager, d.name)
    assert target["__address__"] == "[::1]:8300"


async def test_unreadable_tls_files_are_reported() -> None:
    async with discovering(address="127.0.0.1:1", scheme="https",
                           ssl_ca="/nonexistent/ca.pem") as (d, manager):
        assert d.health.failing
        assert "cannot load the TLS files" in d.health.last_error
        assert labels_of(manager, d.name) == []


async def test_other_datacenter_is_an_error(sim: ConsulSimulator) -> None:
    async with discovering(address=sim.address, datacenter="dc9") as (d, _):
        assert d.health.failing
        assert "No path to datacenter" in d.health.last_error


# ---------------------------------------------------------------------- auth and TLS
async def test_token_is_sent_and_a_wrong_one_is_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    with ConsulSimulator(token="t-0k3n-secret") as sim:
        populate(sim)
        async with discovering(address=sim.address, token="t-0k3n-secret") as (d, manager):
            assert len(labels_of(manager, d.name)) == 7
        assert all(h.get("X-Consul-Token") == "t-0k3n-secret" for h in sim.headers_seen)
        async with discovering(address=sim.address, token="wr0ng-secret") as (d, manager):
            assert labels_of(manager, d.name) == []
            assert d.health.failing
            assert "403" in d.health.last_error
            assert "ACL not found" in d.health.last_error
            assert "wr0ng-secret" not in d.health.last_error
        # No token at all: the anonymous token may not read the agent.
        async with discovering(address=sim.address) as (d, _):
            assert "Permission denied" in d.health.last_error
    assert "secret" not in caplog.text


async def test_basic_auth() -> None:
    with ConsulSimulator(basic_auth=("trawl", "pa55-secret")) as sim:
        async with discovering(address=sim.address, username="trawl",
                               password="pa55-secret") as (d, manager):
            assert len(labels_of(manager, d.name)) == 1
        async with discovering(address=sim.address, username="trawl",
                               password="nope") as (d, _):
            assert "HTTP 401" in d.health.last_error
            assert "nope" not in d.health.last_error


async def test_tls_with_client_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    client = ca.issue_cert("trawl-client")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    with ConsulSimulator(tls=ca, verify_incoming=True) as sim:
        populate(sim)
        ca_file = sim.write_ca(tmp_path / "ca.pem")
        tls = {"ssl_ca": ca_file, "ssl_cert": str(tmp_path / "client.pem"),
               "ssl_key": str(tmp_path / "client.key")}
        async with discovering(address=sim.address, scheme="https", **tls) as (d, manager):
            assert len(labels_of(manager, d.name)) == 7
        # The certificate's name, not the address, checked against ssl-server-name.
        async with discovering(address=f"127.0.0.1:{sim.port}", scheme="https",
                               ssl_server_name="consul.test", **tls) as (d, manager):
            assert len(labels_of(manager, d.name)) == 7
        async with discovering(address=sim.address, scheme="https",
                               ssl_server_name="other.test", **tls) as (d, _):
            assert d.health.failing
        # Without the CA the server is not trusted, unless told to skip verification.
        async with discovering(address=sim.address, scheme="https") as (d, _):
            assert d.health.failing
            assert "CERTIFICATE_VERIFY_FAILED" in d.health.last_error
        async with discovering(address=sim.address, scheme="https",
                               insecure_skip_verify=True, ssl_cert=tls["ssl_cert"],
                               ssl_key=tls["ssl_key"]) as (d, manager):
            assert len(labels_of(manager, d.name)) == 7
        # Consul's verify_incoming: no client certificate, no answer.
        async with discovering(address=sim.address, scheme="https",
                               ssl_ca=ca_file) as (d, _):
            assert d.health.failing


# ---------------------------------------------------------------------- vmagent as reference
def trawl_discover(tmp_path: Path, sections: str) -> dict[str, list[dict[str, str]]]:
    config = tmp_path / "trawl.toml"
    config.write_text(sections)
    out = subprocess.run([TRAWL, "discover", "-c", str(config), "--once"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    assert "t0ken" not in out.stdout + out.stderr
    found: dict[str, list[dict[str, str]]] = {}
    for line in out.stdout.splitlines():
        record = json.loads(line)
        found.setdefault(record["discoverer"].split("/", 1)[1], []).append(record["labels"])
    return found


def keyed(targets: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    return {(t["__meta_consul_service_id"], t["__meta_consul_node"]): t for t in targets}


# Documented differences: vmagent 1.79 has no __meta_consul_partition (Prometheus 2.42
# has), and lists labels with empty values, which Prometheus (and trawl) leave out.
VMAGENT_MISSING = {"__meta_consul_partition"}


def assert_same_targets(ours: list[dict[str, str]], theirs: list[dict[str, str]]) -> None:
    mine = {k: {n: v for n, v in t.items() if n not in VMAGENT_MISSING}
            for k, t in keyed(ours).items()}
    reference = {k: {n: v for n, v in comparable(t).items() if v}
                 for k, t in keyed(theirs).items()}
    assert mine.keys() == reference.keys()
    for key in mine:
        assert mine[key] == reference[key], key


@pytest.mark.servers
def test_same_targets_as_vmagent(tmp_path: Path, ca: trustme.CA) -> None:
    with ConsulSimulator() as plain, \
            ConsulSimulator(token="vm-t0ken", tls=ca, datacenter="eu-west") as secure:
        populate(plain)
        generated = populate_generated(plain, 40)
        populate(secure)
        ca_file = secure.write_ca(tmp_path / "ca.pem")
        jobs = [
            {"job_name": "all", "consul_sd_configs": [{"server": plain.address}]},
            {"job_name": "filtered", "consul_sd_configs": [{
                "server": plain.address, "services": ["web", "db", "cache"],
                "tags": ["prod"], "node_meta": {"rack": "r1"}, "allow_stale": False,
                "tag_separator": ";", "datacenter": "dc1"}]},
            {"job_name": "finance", "consul_sd_configs": [{
                "server": plain.address, "namespace": "finance"}]},
            {"job_name": "secure", "consul_sd_configs": [{
                "server": secure.address, "scheme": "https", "token": "vm-t0ken",
                "tls_config": {"ca_file": ca_file}}]},
        ]
        sections = f"""
[[consul]]
  id = "all"
  address = "{plain.address}"
[[consul]]
  id = "filtered"
  address = "{plain.address}"
  services = ["web", "db", "cache"]
  tags = ["prod"]
  node-meta = {{ rack = "r1" }}
  allow-stale = false
  tag-separator = ";"
  datacenter = "dc1"
[[consul]]
  id = "finance"
  address = "{plain.address}"
  namespace = "finance"
[[consul]]
  id = "secure"
  address = "{secure.address}"
  scheme = "https"
  token = "vm-t0ken"
  ssl-ca = "{ca_file}"
"""
        counts = {"all": 7 + generated, "filtered": 1, "finance": 1, "secure": 7}
        with VMAgent(tmp_path / "vmagent", jobs) as vmagent:
            reference = {job: vmagent.wait_discovered(job, n) for job, n in counts.items()}
            ours = trawl_discover(tmp_path, sections)
            for job in counts:
                assert_same_targets(ours[job], reference[job])
            assert {t["__meta_consul_dc"] for t in ours["secure"]} == {"eu-west"}

        # After changes, both still agree. (A fresh vmagent: its dropped-target list keeps
        # what it saw before for minutes.)
        plain.update("web-a", port=9999, tags=["prod", "v1", "hot"], meta={"v": "2"})
        plain.set_node_meta("web-1", {"rack": "r1", "zone": "z-1"})
        plain.register("web", node="web-1", port=8082, id="web-e", tags=["prod"])
        plain.deregister("web-c")
        with VMAgent(tmp_path / "vmagent2", jobs[:2]) as vmagent:
            reference = {"all": vmagent.wait_discovered("all", 7 + generated),
                         "filtered": vmagent.wait_discovered("filtered", 2)}
            ours = trawl_discover(tmp_path, sections)
            for job in reference:
                assert_same_targets(ours[job], reference[job])
            assert keyed(ours["all"])[("web-a", "web-1")]["__address__"] == "127.0.0.2:9999"


# ---------------------------------------------------------------------- scale
def rss_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LineReader:
    """Collects a process's stdout lines in a thread, each with its arrival time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import threading

        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        import time

        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            with self._cond:
                self.lines.append((time.monotonic(), record))
                self._cond.notify_all()

    def wait(self, check: Callable[[list[tuple[float, dict[str, Any]]]], bool],
             seconds: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: check(self.lines), seconds):
                raise AssertionError(f"no {what} within {seconds:g}s")


def baseline_rss_kib(tmp_path: Path) -> int:
    """The RSS of ``trawl discover`` with a one-target catalog, for comparison."""
    with ConsulSimulator() as sim:
        config = tmp_path / "baseline.toml"
        config.write_text(f'[[consul]]\n  id = "base"\n  address = "{sim.address}"\n')
        proc = subprocess.Popen([TRAWL, "--log-level", "warning", "discover", "-c", str(config)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        try:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline())["labels"]["__meta_consul_service"]
            return rss_kib(proc.pid)["VmRSS"]
        finally:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()


@pytest.mark.slow
def test_scale_500_services_of_10_instances_then_10_percent_change(tmp_path: Path) -> None:
    import time

    services, per_service, nodes = 500, 10, 50
    baseline = baseline_rss_kib(tmp_path)
    with ConsulSimulator(consul_service=False) as sim:
        with sim.batch():
            for n in range(nodes):
                sim.add_node(f"node-{n:02}", f"127.1.{n // 200}.{n % 200 + 1}",
                             meta={"rack": f"r{n % 5}", "az": f"az-{n % 3}"})
            for s in range(services):
                for i in range(per_service):
                    sim.register(f"svc-{s:03}", node=f"node-{(s * per_service + i) % nodes:02}",
                                 id=f"svc-{s:03}-{i}", port=10000 + i,
                                 tags=["scale", f"shard-{i % 4}"], meta={"owner": f"team-{s % 7}"})
        total = services * per_service
        config = tmp_path / "scale.toml"
        config.write_text(f'[[consul]]\n  id = "scale"\n  address = "{sim.address}"\n')
        began = time.monotonic()
        proc = subprocess.Popen([TRAWL, "--log-level", "warning", "discover", "-c", str(config)],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            reader = LineReader(proc)
            reader.wait(lambda lines: len(lines) >= total, 25, f"{total} targets")
            discovered_in = reader.lines[total - 1][0] - began
            time.sleep(0.5)  # let the watchers settle into their blocking queries
            memory_steady = rss_kib(proc.pid)
            cpu_steady = cpu_seconds(proc.pid)
            requests_steady = len(sim.requests)
            assert len(reader.lines) == total

            # 10 % of the instances change: one in each service moves to another port.
            changed_at = time.monotonic()
            with sim.batch():
                for s in range(services):
                    sim.update(f"svc-{s:03}-0", port=20000 + s)

            def converged(lines: list[tuple[float, dict[str, Any]]]) -> bool:
                added = sum(1 for _, r in lines[total:] if r.get("event") == "added")
                removed = sum(1 for _, r in lines[total:] if r.get("event") == "removed")
                return added >= services and removed >= services

            reader.wait(converged, 25, "convergence after the change")
            converged_in = reader.lines[-1][0] - changed_at
            memory_after = rss_kib(proc.pid)
            cpu_change = cpu_seconds(proc.pid) - cpu_steady
            added = {r["labels"]["__address__"] for _, r in reader.lines[total:]
                     if r.get("event") == "added"}
            assert added == {f"127.1.{(s * 10) % nodes // 200}.{(s * 10) % nodes % 200 + 1}"
                             f":{20000 + s}" for s in range(services)}
            assert len(reader.lines) == total + 2 * services
            # Blocking queries, not polling: about one query per watcher to settle in.
            assert requests_steady <= 3 * (services + 1) + 5
        finally:
            proc.terminate()
            proc.wait(10)
            assert proc.stderr is not None
            stderr = proc.stderr.read()
            assert proc.stdout is not None
            proc.stdout.close()
            proc.stderr.close()
    report = (f"consul scale: {total} targets ({services} services x {per_service}) "
              f"discovered in {discovered_in:.2f}s; {services} changed instances (10%) "
              f"converged in {converged_in:.2f}s; trawl CPU {cpu_steady:.2f}s to discover "
              f"(start-up included), {cpu_change:.2f}s for the change; trawl RSS "
              f"{memory_steady['VmRSS'] / 1024:.1f} MiB steady, "
              f"{memory_after['VmRSS'] / 1024:.1f} MiB after the change, peak "
              f"{memory_after['VmHWM'] / 1024:.1f} MiB (a trawl discovering one target: "
              f"{baseline / 1024:.1f} MiB); {requests_steady} API requests to settle")
    print(report)
    (tmp_path / "report.txt").write_text(report + "\n" + stderr)
