"""The gce discoverer against the Compute Engine + OAuth2 simulator on loopback.

google-auth signs a service-account JWT with a key made here; the simulator's token
endpoint checks it with the public half and hands out access tokens that its instances
API requires.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trawl
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from trawl_discovery_gce import GCEConfig, GCEDiscoverer

from tests.servers import ServerProcess, require_binary, wait_http
from tests.servers.prometheus import Prometheus, comparable
from tests.simulators.gce import RESOURCE_BASE, GCESimulator, GoogleFront, Instance, Interface

PROJECT = "trawl-test-123"
ZONE = "europe-west1-b"
EMAIL = f"discovery@{PROJECT}.iam.gserviceaccount.com"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return _key(), _key()


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def sim(keys):
    with GCESimulator(project=PROJECT, zone=ZONE, page_size=2) as s:
        s.add_account(EMAIL, keys[0].public_key())
        populate(s)
        yield s


def populate(sim: GCESimulator) -> None:
    # Six instances (three pages of two): two interfaces with a public IP on the first; an
    # access config without an address; none at all; tags, labels and metadata (one item
    # without a value); one instance without any interface, which is not a target.
    sim.add(Instance("web-1", [Interface("nic0", "127.0.0.11", "127.1.0.11"),
                               Interface("nic1", "127.0.0.12", "127.1.0.12")],
                     tags=["http-server", "prod"], labels={"env": "prod", "team": "ops"},
                     metadata={"startup-script": "echo hi", "empty": None}))
    sim.add(Instance("web-2", [Interface("nic0", "127.0.0.21", "")],
                     machine_type="n2-standard-4", tags=["http-server"]))
    sim.add(Instance("db-1", [Interface("nic0", "127.0.0.31"),
                              Interface("nic1", "127.0.0.32", "127.1.0.32"),
                              Interface("nic2", "127.0.0.33")],
                     status="TERMINATED", labels={"role": "db"}))
    sim.add(Instance("job-1", [Interface("nic0", "127.0.0.41")], status="STOPPING"))
    sim.add(Instance("no-net", []))
    sim.add(Instance("web-3", [Interface("nic0", "127.0.0.51", "127.1.0.51")]))


def expected(sim: GCESimulator, names: list[str] | None = None, port: int = 9100,
             sep: str = ",") -> list[dict[str, str]]:
    """The targets Prometheus 2.42's gce SD makes of `populate`'s instances."""
    out = []
    for inst in sorted(sim.instances.values(), key=lambda i: i.name):
        if not inst.interfaces or (names is not None and inst.name not in names):
            continue
        body = sim.instance_json(inst)
        first = body["networkInterfaces"][0]
        labels = {
            "__address__": f"{first['networkIP']}:{port}",
            "__meta_gce_project": PROJECT,
            "__meta_gce_zone": f"{RESOURCE_BASE}/projects/{PROJECT}/zones/{ZONE}",
            "__meta_gce_instance_id": body["id"],
            "__meta_gce_instance_name": inst.name,
            "__meta_gce_instance_status": inst.status,
            "__meta_gce_machine_type": f"{RESOURCE_BASE}/projects/{PROJECT}/zones/{ZONE}/"
                                       f"machineTypes/{inst.machine_type}",
            "__meta_gce_network": first["network"],
            "__meta_gce_subnetwork": first["subnetwork"],
            "__meta_gce_private_ip": first["networkIP"],
        }
        for iface in inst.interfaces:
            labels[f"__meta_gce_interface_ipv4_{iface.name}"] = iface.ip
        if inst.tags:
            labels["__meta_gce_tags"] = sep + sep.join(inst.tags) + sep
        for k, v in inst.metadata.items():
            if v is not None:
                labels["__meta_gce_metadata_" + k.replace("-", "_")] = v
        for k, v in inst.labels.items():
            labels["__meta_gce_label_" + k] = v
        if inst.interfaces[0].nat_ip:
            labels["__meta_gce_public_ip"] = inst.interfaces[0].nat_ip
        out.append(labels)
    return out


def by_name(targets: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(targets, key=lambda t: t["__meta_gce_instance_name"])


def credentials_file(tmp_path: Path, sim: GCESimulator, key: rsa.RSAPrivateKey,
                     name: str = "sa.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "0123abcd",
        "private_key": pem(key), "client_email": EMAIL, "client_id": "10987654321",
        "token_uri": sim.token_uri, "auth_uri": "https://accounts.google.com/o/oauth2/auth",
    }))
    return path


def registry() -> trawl.Registry:
    return trawl.collect(trawl.get_plugin_manager())


def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "gce" in kinds


def test_kapacitor_section_loads_with_its_defaults():
    config = trawl.parse_config({"gce": [{
        "enabled": False, "id": "mygce", "project": "", "zone": "", "filter": "",
        "refresh-interval": "1m0s", "port": 80, "tag-separator": ",",
    }]}, registry())
    [(cls, c)] = config.discoverers
    assert cls is GCEDiscoverer
    assert (c.id, c.project, c.zone, c.filter, c.refresh_interval, c.port, c.tag_separator,
            c.endpoint, c.credentials_file) == (
        "mygce", "", "", "", 60.0, 80, ",", "https://compute.googleapis.com", "")
    assert GCEConfig(project="p", zone="z").api_base == "https://compute.googleapis.com/compute/v1/"


@pytest.mark.parametrize(("section", "message"), [
    ({"zone": "z"}, "project"),
    ({"project": "p"}, "zone"),
    ({"project": "p", "zone": "z", "port": 70000}, "port"),
    ({"project": "p", "zone": "z", "endpoint": "compute.googleapis.com"}, "http(s) URL"),
    ({"project": "p", "zone": "z", "credential-file": "x.json"}, "credential-file"),
])
def test_bad_config_names_the_key(section, message):
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config({"gce": [section]}, registry(), "t.toml")
    text = "\n".join(info.value.problems)
    assert "t.toml" in text
    assert "gce" in text
    assert message in text


def discover_once(tmp_path: Path, text: str, env: dict[str, str] | None = None
                  ) -> tuple[list[dict[str, Any]], str]:
    path = tmp_path / "trawl.toml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "trawl", "discover", "--once", "-c", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def section(sim: GCESimulator, creds: Path, extra: str = "") -> str:
    return f"""
[[gce]]
  id = "mygce"
  project = "{PROJECT}"
  zone = "{ZONE}"
  port = 9100
  endpoint = "{sim.url}"
  credentials-file = "{creds}"
{extra}"""


def test_labels_paging_and_interfaces_as_prometheus(sim, keys, tmp_path):
    lines, _ = discover_once(tmp_path, section(sim, credentials_file(tmp_path, sim, keys[0])))
    assert {(line["discoverer"], line["source"]) for line in lines} == {
        ("gce/mygce", f"GCE_{PROJECT}_{ZONE}")}
    got = by_name([line["labels"] for line in lines])
    assert got == by_name(expected(sim))
    assert [t["__meta_gce_instance_name"] for t in got] == [
        "db-1", "job-1", "web-1", "web-2", "web-3"]
    web1 = got[2]
    assert web1["__meta_gce_tags"] == ",http-server,prod,"
    assert web1["__meta_gce_public_ip"] == "127.1.0.11"
    assert (web1["__meta_gce_interface_ipv4_nic0"], web1["__meta_gce_interface_ipv4_nic1"]) == (
        "127.0.0.11", "127.0.0.12")
    assert "__meta_gce_public_ip" not in got[0]      # only the first interface's NAT counts
    assert "__meta_gce_public_ip" not in got[3]      # an access config without natIP
    # Six instances at two a page: three pages, each after the first asked by its token.
    assert [r.get("pageToken") is not None for r in sim.list_requests] == [False, True, True]
    assert sim.token_requests == 1


def test_filter_and_tag_separator(sim, keys, tmp_path):
    lines, _ = discover_once(tmp_path, section(
        sim, credentials_file(tmp_path, sim, keys[0]),
        '  filter = "(status = RUNNING) (labels.env = prod)"\n  tag-separator = "|"'))
    assert [line["labels"] for line in lines] == expected(sim, ["web-1"], sep="|")
    assert sim.list_requests[0]["filter"] == "(status = RUNNING) (labels.env = prod)"


def test_wrong_key_is_a_clear_error_without_credentials(sim, keys, tmp_path):
    creds = credentials_file(tmp_path, sim, keys[1])
    lines, stderr = discover_once(tmp_path, section(sim, creds))
    assert lines == []
    assert "warning: gce/mygce: error retrieving refresh targets from gce:" in stderr
    assert "Invalid JWT Signature." in stderr
    assert sim.token_failures == 1
    assert sim.list_requests == []


def test_bad_credentials_file_is_a_clear_error(sim, tmp_path):
    creds = tmp_path / "broken.json"
    creds.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----')
    _, stderr = discover_once(tmp_path, section(sim, creds))
    assert "warning: gce/mygce:" in stderr
    assert str(creds) in stderr
    missing = tmp_path / "missing.json"
    _, stderr = discover_once(tmp_path, section(sim, missing))
    assert f"credentials-file {missing} was not found" in stderr
    other = tmp_path / "other.json"
    other.write_text('{"type": "external_account", "credential_source": {"executable": {}}}')
    _, stderr = discover_once(tmp_path, section(sim, other))
    assert "type 'external_account' is not supported" in stderr


def test_unknown_project_is_reported(sim, keys, tmp_path):
    text = section(sim, credentials_file(tmp_path, sim, keys[0])).replace(
        f'project = "{PROJECT}"', 'project = "nope"')
    _, stderr = discover_once(tmp_path, text)
    assert "HTTP 404: The resource 'projects/nope' was not found" in stderr


@asynccontextmanager
async def running(config: GCEConfig) -> AsyncIterator[tuple[GCEDiscoverer,
                                                            trawl.DiscoveryManager]]:
    discoverer = GCEDiscoverer(config)
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield discoverer, manager
        nursery.cancel_scope.cancel()


def names(manager: trawl.DiscoveryManager) -> list[str]:
    return sorted(t.labels["__meta_gce_instance_name"] for t in manager.snapshot("gce/t"))


async def eventually(check: Callable[[], bool], within: float = 20.0) -> None:
    """Poll ``check`` (the discoverer changes state from its own task) until it is true."""
    with trio.fail_after(within):
        while not check():
            await trio.sleep(0.05)


def config(sim: GCESimulator, creds: Path | None, **overrides: Any) -> GCEConfig:
    values: dict[str, Any] = {"id": "t", "project": PROJECT, "zone": ZONE, "port": 9100,
                              "endpoint": sim.url,
                              "credentials_file": str(creds) if creds else ""}
    values.update(overrides)
    return GCEConfig(**values)


async def test_instances_added_and_removed_with_adc(sim, keys, tmp_path, monkeypatch):
    # No credentials-file: application default credentials find the same file through
    # GOOGLE_APPLICATION_CREDENTIALS.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS",
                       str(credentials_file(tmp_path, sim, keys[0])))
    async with running(config(sim, None, refresh_interval=0.3)) as (discoverer, manager):
        assert names(manager) == ["db-1", "job-1", "web-1", "web-2", "web-3"]
        sim.add(Instance("web-4", [Interface("nic0", "127.0.0.61")]))
        sim.remove("db-1")
        await eventually(lambda: names(manager) == ["job-1", "web-1", "web-2", "web-3",
                                                    "web-4"])
        assert not discoverer.health.failing
        assert discoverer.health.targets == 5


async def test_failures_keep_targets_back_off_and_recover(sim, keys, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)     # the libraries' debug logs too: no key, no token
    creds = credentials_file(tmp_path, sim, keys[0])
    # A 3 s refresh interval leaves room for the 1 s, 2 s (±20 %) backoff steps.
    async with running(config(sim, creds, refresh_interval=3.0)) as (discoverer, manager):
        good = names(manager)
        assert len(good) == 5
        sim.fail_list = (503, "backendError", "Internal error. Please try again.")
        await eventually(lambda: discoverer.health.failing)
        assert "HTTP 503" in discoverer.health.last_error
        failures = discoverer.health.failures
        start = trio.current_time()
        await eventually(lambda: discoverer.health.failures >= failures + 2)
        assert trio.current_time() - start > 2.3   # 1 s + 2 s, less 20 % jitter
        assert names(manager) == good

        # Tokens are revoked and the account's key replaced: the new JWT is refused.
        with sim.lock:
            sim.tokens.clear()
            sim.accounts[EMAIL] = keys[1].public_key()
        sim.fail_list = None
        await eventually(lambda: "Invalid JWT Signature" in discoverer.health.last_error)
        assert names(manager) == good

        with sim.lock:
            sim.accounts[EMAIL] = keys[0].public_key()
        await eventually(lambda: not discoverer.health.failing)
        assert names(manager) == good
    assert "PRIVATE KEY" not in caplog.text
    assert sim.tokens
    assert not any(token in caplog.text for token in sim.tokens)
    assert "recovered" in caplog.text


async def test_blocking_calls_leave_the_trio_loop_free(sim, keys, tmp_path):
    # While a refresh is under way the Trio loop keeps ticking every 10 ms: with the
    # simulator answering slowly, a blocked loop would count one tick, a free one dozens.
    sim.delay = 0.2   # three pages
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    discoverer = GCEDiscoverer(config(sim, credentials_file(tmp_path, sim, keys[0])))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        [group] = await discoverer.refresh()
        nursery.cancel_scope.cancel()
    discoverer.close()
    assert len(group.targets) == 5
    assert ticks >= 20


class _PrometheusWithEnv(Prometheus):
    env: dict[str, str] = {}

    def start(self) -> Prometheus:
        binary = require_binary(self.binary)
        self.process = ServerProcess(self.name, self.argv(binary), self.workdir,
                                     env=self.env).start()
        try:
            wait_http(self.ready_url, timeout=30)
        except TimeoutError:
            raise TimeoutError(f"{self.name} did not start:\n{self.process.log_tail()}") from None
        return self


@pytest.mark.servers
def test_same_labels_as_prometheus(sim, keys, tmp_path):
    # Prometheus 2.42 always calls https://compute.googleapis.com: it is given a CONNECT
    # proxy on loopback (HTTPS_PROXY) that terminates TLS with a test certificate for that
    # name (SSL_CERT_FILE) and serves the simulator. Its token requests go straight to the
    # simulator's token_uri (Go never proxies loopback addresses).
    ca = trustme.CA()
    ca_file = tmp_path / "google-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    creds = credentials_file(tmp_path, sim, keys[0])
    prometheus = _PrometheusWithEnv(tmp_path / "prom", [{
        "job_name": "gce",
        "gce_sd_configs": [{"project": PROJECT, "zone": ZONE, "port": 9100,
                            "refresh_interval": "5s", "tag_separator": ","}],
    }])
    with GoogleFront(sim, ca_file, ca) as front:
        prometheus.env = {"GOOGLE_APPLICATION_CREDENTIALS": str(creds),
                          "HTTPS_PROXY": front.url, "https_proxy": front.url,
                          "NO_PROXY": "", "no_proxy": "", "SSL_CERT_FILE": str(ca_file)}
        with prometheus:
            theirs = [comparable(t) for t in prometheus.wait_discovered("gce", 5, timeout=40)]
    assert by_name(theirs) == by_name(expected(sim))
    ours = trio.run(_refresh, config(sim, creds))
    assert by_name(ours) == by_name(theirs)


async def _refresh(c: GCEConfig) -> list[dict[str, str]]:
    discoverer = GCEDiscoverer(c)
    try:
        [group] = await discoverer.refresh()
    finally:
        discoverer.close()
    return [dict(t) for t in group.targets]
