"""The dns discoverer against a real dnsmasq on a free loopback port."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trawl
import trio
from trawl_discovery_dns import DNSConfig, DNSDiscoverer

from tests.servers.dnsmasq import Dnsmasq

SRV = "_prometheus._tcp.test.internal"
HOSTS = [("node.test.internal", ["127.0.0.1", "::1"]), ("web2.test.internal", ["127.0.0.2"])]
SRVS = [(SRV, "node.test.internal", 18100), (SRV, "web2.test.internal", 18101)]
MXS = [("mail.test.internal", "mx1.test.internal", 10)]

pytestmark = pytest.mark.servers


@pytest.fixture
def dnsmasq(tmp_path: Path):
    with Dnsmasq(tmp_path / "dns", hosts=HOSTS, srv=SRVS, mx=MXS) as server:
        yield server


def registry() -> trawl.Registry:
    return trawl.collect(trawl.get_plugin_manager())


def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "dns" in kinds


def test_kapacitor_section_loads_with_its_defaults():
    # Kapacitor's sample [[dns]] section (no record-names, disabled) loads as it is.
    config = trawl.parse_config({"dns": [{"enabled": False, "id": "mydns",
                                          "refresh-interval": "30s", "type": "SRV",
                                          "port": 80}]}, registry())
    [(cls, c)] = config.discoverers
    assert cls is DNSDiscoverer
    assert (c.id, c.refresh_interval, c.type, c.port, c.record_names, c.nameservers) == (
        "mydns", 30.0, "SRV", 80, [], [])
    defaults = DNSConfig(record_names=["x"])
    assert (defaults.refresh_interval, defaults.type, defaults.port, defaults.timeout) == (
        30.0, "SRV", 80, 5.0)


@pytest.mark.parametrize(("section", "message"), [
    ({"id": "x"}, "record-names"),
    ({"record-names": ["a"], "type": "TXT"}, "type"),
    ({"record-names": ["a"], "type": "A", "port": 0}, "port"),
    ({"record-names": ["a"], "nameservers": ["dns.example.com"]}, "is not an IP address"),
    ({"record-names": ["a"], "nameservers": ["127.0.0.1:99999"]}, "is not a port"),
    ({"record-names": ["a"], "nameservers": ["[::1"]}, "[address]:port"),
    ({"record-names": ["a"], "record-name": ["typo"]}, "record-name"),
])
def test_bad_config_names_the_key(section, message):
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config({"dns": [section]}, registry(), "t.toml")
    text = "\n".join(info.value.problems)
    assert "t.toml" in text
    assert "dns" in text
    assert message in text


def test_nameserver_forms():
    c = DNSConfig(record_names=["a"], type="aaaa",
                  nameservers=["127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353"])
    assert c.type == "AAAA"


def discover_once(tmp_path: Path, sections: str) -> tuple[list[dict], str]:
    path = tmp_path / "trawl.toml"
    path.write_text(sections)
    proc = subprocess.run([sys.executable, "-m", "trawl", "discover", "--once", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_srv_a_aaaa_and_mx_labels_as_prometheus(dnsmasq, tmp_path):
    lines, _ = discover_once(tmp_path, f"""
[[dns]]
  id = "srv"
  record-names = ["{SRV}"]
  nameservers = ["{dnsmasq.nameserver}"]
[[dns]]
  id = "a"
  type = "A"
  port = 9100
  record-names = ["node.test.internal", "web2.test.internal"]
  nameservers = ["{dnsmasq.nameserver}"]
[[dns]]
  id = "aaaa"
  type = "AAAA"
  port = 9100
  record-names = ["node.test.internal"]
  nameservers = ["{dnsmasq.nameserver}"]
[[dns]]
  id = "mx"
  type = "MX"
  port = 25
  record-names = ["mail.test.internal"]
  nameservers = ["{dnsmasq.nameserver}"]
""")
    got = sorted((line["discoverer"], line["source"], line["labels"]["__address__"],
                  line["labels"]) for line in lines)
    assert [g[:3] for g in got] == [
        ("dns/a", "node.test.internal", "127.0.0.1:9100"),
        ("dns/a", "web2.test.internal", "127.0.0.2:9100"),
        ("dns/aaaa", "node.test.internal", "[::1]:9100"),
        ("dns/mx", "mail.test.internal", "mx1.test.internal:25"),
        ("dns/srv", SRV, "node.test.internal:18100"),
        ("dns/srv", SRV, "web2.test.internal:18101"),
    ]
    # Prometheus 2.42 (discovery/dns/dns.go): the SRV target keeps its final dot in the
    # label but not in the address (MX likewise); every target gets every label, empty
    # where it does not apply, and an empty label is no label (Prometheus's label builder,
    # and trawl's TargetGroup.target_labels).
    assert got[4][3] == {
        "__address__": "node.test.internal:18100",
        "__meta_dns_name": SRV,
        "__meta_dns_srv_record_target": "node.test.internal.",
        "__meta_dns_srv_record_port": "18100",
    }
    assert got[0][3] == {
        "__address__": "127.0.0.1:9100",
        "__meta_dns_name": "node.test.internal",
    }
    assert got[3][3] == {
        "__address__": "mx1.test.internal:25",
        "__meta_dns_name": "mail.test.internal",
        "__meta_dns_mx_record_target": "mx1.test.internal.",
    }


def test_unknown_names_are_empty_and_refused_names_fail(dnsmasq, tmp_path):
    lines, stderr = discover_once(tmp_path, f"""
[[dns]]
  id = "nx"
  type = "A"
  record-names = ["nosuch.test.internal", "web2.test.internal"]
  nameservers = ["{dnsmasq.nameserver}"]
[[dns]]
  id = "refused"
  type = "A"
  record-names = ["outside.example"]
  nameservers = ["{dnsmasq.nameserver}"]
  timeout = "1s"
""")
    assert [(x["discoverer"], x["labels"]["__address__"]) for x in lines] == [
        ("dns/nx", "127.0.0.2:80")]
    # NXDOMAIN is an answer (no targets); REFUSED is an error, reported but not fatal.
    assert "dns/nx" not in stderr
    assert "warning: dns/refused: could not resolve 'outside.example'" in stderr
    assert "REFUSED" in stderr


@asynccontextmanager
async def running(config: DNSConfig) -> AsyncIterator[tuple[DNSDiscoverer,
                                                            trawl.DiscoveryManager]]:
    discoverer = DNSDiscoverer(config)
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield discoverer, manager
        nursery.cancel_scope.cancel()


def addresses(manager: trawl.DiscoveryManager) -> list[tuple[str, str]]:
    return sorted((t.source, t.labels["__address__"]) for t in manager.snapshot("dns/t"))


async def eventually(check: Callable[[], bool], within: float = 15.0) -> None:
    """Poll ``check`` (the discoverer changes state from its own task) until it is true."""
    with trio.fail_after(within):
        while not check():
            await trio.sleep(0.05)


async def test_records_added_changed_and_removed_between_refreshes(dnsmasq):
    config = DNSConfig(id="t", record_names=[SRV, "_other._tcp.test.internal"],
                       nameservers=[dnsmasq.nameserver], refresh_interval=0.2, timeout=1.0)
    async with running(config) as (discoverer, manager):
        assert addresses(manager) == [(SRV, "node.test.internal:18100"),
                                      (SRV, "web2.test.internal:18101")]
        # Added: a record under a second name, and a third under the first.
        await trio.to_thread.run_sync(lambda: dnsmasq.set_records(srv=[
            *SRVS, (SRV, "web3.test.internal", 18102),
            ("_other._tcp.test.internal", "node.test.internal", 9000)]))
        await eventually(lambda: addresses(manager) == [
            ("_other._tcp.test.internal", "node.test.internal:9000"),
            (SRV, "node.test.internal:18100"), (SRV, "web2.test.internal:18101"),
            (SRV, "web3.test.internal:18102")])
        # Changed: a port moves; removed: the second name's only record goes away.
        await trio.to_thread.run_sync(lambda: dnsmasq.set_records(srv=[
            (SRV, "node.test.internal", 18200), (SRV, "web2.test.internal", 18101)]))
        await eventually(lambda: addresses(manager) == [
            (SRV, "node.test.internal:18200"), (SRV, "web2.test.internal:18101")])
        ports = {t.labels["__meta_dns_srv_record_port"] for t in manager.snapshot("dns/t")}
        assert ports == {"18200", "18101"}
        assert not discoverer.health.failing


async def test_a_records_follow_changes(dnsmasq):
    config = DNSConfig(id="t", type="A", port=9100, record_names=["web2.test.internal"],
                       nameservers=[dnsmasq.nameserver], refresh_interval=0.2, timeout=1.0)
    async with running(config) as (_, manager):
        assert addresses(manager) == [("web2.test.internal", "127.0.0.2:9100")]
        await trio.to_thread.run_sync(lambda: dnsmasq.set_records(hosts=[
            ("web2.test.internal", ["127.0.0.3"]), ("web2.test.internal", ["127.0.0.4"])]))
        await eventually(lambda: addresses(manager) == [
            ("web2.test.internal", "127.0.0.3:9100"), ("web2.test.internal", "127.0.0.4:9100")])
        await trio.to_thread.run_sync(lambda: dnsmasq.set_records(hosts=[]))
        await eventually(lambda: addresses(manager) == [])   # NXDOMAIN: no targets


async def test_unreachable_server_keeps_targets_and_recovers(dnsmasq, caplog):
    config = DNSConfig(id="t", record_names=[SRV], nameservers=[dnsmasq.nameserver],
                       refresh_interval=0.3, timeout=0.5)
    async with running(config) as (discoverer, manager):
        before = addresses(manager)
        assert len(before) == 2
        await trio.to_thread.run_sync(dnsmasq.stop)
        await eventually(lambda: discoverer.health.failing)
        assert f"could not resolve {SRV!r}" in discoverer.health.last_error
        failures = discoverer.health.failures
        await eventually(lambda: discoverer.health.failures >= failures + 2)  # it retries
        assert addresses(manager) == before
        dnsmasq.srv = [(SRV, "node.test.internal", 18100)]
        await trio.to_thread.run_sync(dnsmasq.start)
        await eventually(lambda: not discoverer.health.failing)
        await eventually(lambda: addresses(manager) == [(SRV, "node.test.internal:18100")])
        assert discoverer.health.targets == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "trawl.discovery"]
    assert any(m.startswith("discoverer dns/t failed: could not resolve") for m in logged)
    assert "discoverer dns/t recovered" in logged


async def test_one_failing_name_keeps_its_last_targets(dnsmasq, tmp_path):
    config = DNSConfig(id="t", type="A", port=80,
                       record_names=["web2.test.internal", "node.test.internal"],
                       nameservers=[dnsmasq.nameserver], refresh_interval=0.2, timeout=0.5)
    async with running(config) as (discoverer, manager):
        assert addresses(manager) == [("node.test.internal", "127.0.0.1:80"),
                                      ("web2.test.internal", "127.0.0.2:80")]
        # node.test.internal moves out of the local domain: dnsmasq now refuses it, so
        # its last good target stays while web2's change goes through.
        dnsmasq.local_domain = "web2.test.internal"
        await trio.to_thread.run_sync(lambda: dnsmasq.set_records(
            hosts=[("web2.test.internal", ["127.0.0.9"])]))
        await eventually(lambda: ("web2.test.internal", "127.0.0.9:80") in addresses(manager))
        await eventually(lambda: discoverer.health.failing)
        assert addresses(manager) == [("node.test.internal", "127.0.0.1:80"),
                                      ("web2.test.internal", "127.0.0.9:80")]
        assert "node.test.internal" in discoverer.health.last_error


async def test_garbage_answers_are_an_error():
    # A "server" that answers every query with bytes that are not a DNS message.
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def garbage() -> None:
        while True:
            data, peer = await sock.recvfrom(512)
            await sock.sendto(data[:2] + b"\x81\x80garbage", peer)

    config = DNSConfig(id="t", record_names=[SRV], nameservers=[f"127.0.0.1:{port}"],
                       refresh_interval=10, timeout=0.5)
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(garbage)
            async with running(config) as (discoverer, manager):
                assert discoverer.health.failing
                assert f"could not resolve {SRV!r}" in discoverer.health.last_error
                assert manager.snapshot("dns/t") == []
            nursery.cancel_scope.cancel()
