"""The azure discoverer against the ARM + Entra ID simulator (HTTPS on loopback).

The SDKs trust the simulator's test CA through ``REQUESTS_CA_BUNDLE`` and reach its token
endpoint through ``AZURE_AUTHORITY_HOST``, both set only in this test process (with
monkeypatch) or in the environment of the ``trawl`` subprocess.
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
from trawl_discovery_azure import AzureConfig, AzureDiscoverer

from tests.servers import ServerProcess, wait_http
from tests.servers.prometheus import Prometheus, comparable
from tests.simulators.azure import VM, AzureSimulator, Nic

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0d5b4b3e-3f7d-4b39-9c86-1f7a6e3e9a11"
SECRET = "Zx8Q~very-secret-value.do-not-log"
SUB = "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def sim(tmp_path: Path):
    with AzureSimulator(tmp_path / "azure", tenant_id=TENANT, client_id=CLIENT,
                        client_secret=SECRET, subscription_id=SUB, page_size=2) as s:
        populate(s)
        yield s


@pytest.fixture
def sdk_env(sim: AzureSimulator, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"REQUESTS_CA_BUNDLE": str(sim.ca_file), "AZURE_AUTHORITY_HOST": sim.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def populate(sim: AzureSimulator) -> None:
    # Five VMs in two resource groups (three pages of two), one with two NICs of which the
    # second is primary and has no public IP, one deallocated (its NIC has no primary flag),
    # one whose NIC is gone; and a scale set of two instances in a second group.
    sim.add_vm("Prod-RG", VM("web-1", [Nic("web-1-nic0", "127.0.0.11", "127.1.0.11",
                                            primary=False),
                                        Nic("web-1-nic1", "127.0.0.12", None)],
                             computer_name="web1host", tags={"env": "prod", "team-name": "ops"}))
    sim.add_vm("Prod-RG", VM("web-2", [Nic("web-2-nic", "127.0.0.21", "127.1.0.21")],
                             location="northeurope", size="Standard_D2s_v3"))
    sim.add_vm("Prod-RG", VM("stopped", [Nic("stopped-nic", "127.0.0.31", primary=None)]))
    sim.add_vm("other-rg", VM("win-1", [Nic("win-1-nic", "127.0.0.41")], os_type="Windows"))
    sim.add_vm("other-rg", VM("orphan", [Nic("orphan-nic", "127.0.0.51")]))
    sim.add_scale_set("other-rg", "pool", [
        VM("pool_0", [Nic("pool-nic", "127.0.0.61", "127.1.0.61")], tags={"role": "worker"}),
        VM("pool_1", [Nic("pool-nic", "127.0.0.62")], size=""),
    ])
    # The orphan's NIC is deleted: ARM answers 404, the VM is skipped (as Prometheus does).
    sim.deleted_nics.add("orphan-nic")


def expected(sim: AzureSimulator) -> list[dict[str, str]]:
    """The targets Prometheus 2.42's azure SD makes of `populate`'s machines."""
    def machine(rg: str, name: str, ip: str, *, vm_id: str | None = None,
                computer: str | None = None, os_type: str = "Linux",
                location: str = "westeurope", size: str = "Standard_A1",
                **extra: str) -> dict[str, str]:
        labels = {
            "__address__": f"{ip}:9100",
            "__meta_azure_subscription_id": SUB,
            "__meta_azure_tenant_id": TENANT,
            "__meta_azure_machine_id": vm_id or sim.vm_id(rg, name),
            "__meta_azure_machine_name": name,
            "__meta_azure_machine_computer_name": computer or name,
            "__meta_azure_machine_os_type": os_type,
            "__meta_azure_machine_location": location,
            "__meta_azure_machine_resource_group": rg.lower(),
            "__meta_azure_machine_private_ip": ip,
            "__meta_azure_machine_size": size,
            **extra,
        }
        return {k: v for k, v in labels.items() if v}

    pool = sim.scale_set_id("other-rg", "pool")
    return [
        machine("Prod-RG", "web-1", "127.0.0.12", computer="web1host",
                __meta_azure_machine_tag_env="prod", __meta_azure_machine_tag_team_name="ops"),
        machine("Prod-RG", "web-2", "127.0.0.21", location="northeurope",
                size="Standard_D2s_v3", __meta_azure_machine_public_ip="127.1.0.21"),
        machine("other-rg", "win-1", "127.0.0.41", os_type="Windows"),
        machine("other-rg", "pool_0", "127.0.0.61", vm_id=f"{pool}/virtualMachines/0",
                __meta_azure_machine_scale_set="pool",
                __meta_azure_machine_public_ip="127.1.0.61",
                __meta_azure_machine_tag_role="worker"),
        machine("other-rg", "pool_1", "127.0.0.62", vm_id=f"{pool}/virtualMachines/1", size="",
                __meta_azure_machine_scale_set="pool"),
    ]


def by_name(targets: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(targets, key=lambda t: t["__meta_azure_machine_name"])


def registry() -> trawl.Registry:
    return trawl.collect(trawl.get_plugin_manager())


def config(sim: AzureSimulator, **overrides: Any) -> AzureConfig:
    values: dict[str, Any] = {"id": "t", "subscription_id": SUB, "tenant_id": TENANT,
                              "client_id": CLIENT, "client_secret": SECRET, "port": 9100,
                              "resource_manager_endpoint": sim.url}
    values.update(overrides)
    return AzureConfig(**values)


def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "azure" in kinds


def test_kapacitor_section_loads_with_its_defaults():
    # Kapacitor's sample [[azure]] section (disabled, every credential empty) loads as it is.
    config = trawl.parse_config({"azure": [{
        "enabled": False, "id": "myazure", "port": 80, "subscription-id": "",
        "tenant-id": "", "client-id": "", "client-secret": "", "refresh-interval": "5m0s",
    }]}, registry())
    [(cls, c)] = config.discoverers
    assert cls is AzureDiscoverer
    assert (c.id, c.port, c.refresh_interval, c.environment, c.authentication_method,
            c.resource_group, c.resource_manager_endpoint) == (
        "myazure", 80, 300.0, "AzurePublicCloud", "OAuth", "", "")
    assert AzureConfig(subscription_id="s", authentication_method="SDK",
                       environment="azurechinacloud").environment == "azurechinacloud"


@pytest.mark.parametrize(("section", "message"), [
    ({"tenant-id": "t", "client-id": "c", "client-secret": "s"}, "subscription-id"),
    ({"subscription-id": "s", "client-id": "c"}, "tenant-id, client-secret"),
    ({"subscription-id": "s", "authentication-method": "Password"}, "authentication-method"),
    ({"subscription-id": "s", "authentication-method": "SDK", "environment": "Mars"},
     "unknown environment"),
    ({"subscription-id": "s", "authentication-method": "SDK", "port": 0}, "port"),
    ({"subscription-id": "s", "authentication-method": "SDK", "environment": ""},
     "unknown environment"),
    ({"subscription-id": "s", "authentication-method": "SDK",
      "resource-manager-endpoint": "management.azure.com"}, "not an http(s) URL"),
    ({"subscription-id": "s", "authentication-method": "SDK", "resourcegroup": "x"},
     "resourcegroup"),
])
def test_bad_config_names_the_key(section, message):
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config({"azure": [section]}, registry(), "t.toml")
    text = "\n".join(info.value.problems)
    assert "t.toml" in text
    assert "azure" in text
    assert message in text


def test_the_secret_is_masked_in_the_config():
    c = AzureConfig(subscription_id="s", tenant_id="t", client_id="c", client_secret=SECRET)
    assert SECRET not in repr(c)
    assert SECRET not in json.dumps(c.model_dump(mode="json", by_alias=True))


def discover_once(tmp_path: Path, sim: AzureSimulator, section: str, env: dict[str, str]
                  ) -> tuple[list[dict[str, Any]], str]:
    path = tmp_path / "trawl.toml"
    path.write_text(section)
    proc = subprocess.run([sys.executable, "-m", "trawl", "discover", "--once", "-c", str(path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def section(sim: AzureSimulator, secret: str = SECRET, extra: str = "") -> str:
    return f"""
[[azure]]
  id = "myazure"
  port = 9100
  subscription-id = "{SUB}"
  tenant-id = "{TENANT}"
  client-id = "{CLIENT}"
  client-secret = "{secret}"
  refresh-interval = "5m0s"
  resource-manager-endpoint = "{sim.url}"
{extra}"""


def test_labels_paging_nics_and_scale_sets_as_prometheus(sim, tmp_path):
    env = {"REQUESTS_CA_BUNDLE": str(sim.ca_file), "AZURE_AUTHORITY_HOST": sim.url}
    lines, _ = discover_once(tmp_path, sim, section(sim), env)
    assert {line["discoverer"] for line in lines} == {"azure/myazure"}
    assert by_name([line["labels"] for line in lines]) == by_name(expected(sim))
    # Five VMs at two a page: the list was read in three pages via nextLink.
    vm_lists = [p for p in sim.calls.arm if "/virtualMachines?" in p and "ScaleSets" not in p]
    assert len(vm_lists) == 3
    assert "%24skiptoken=4" in vm_lists[-1]
    assert any("virtualMachineScaleSets/pool/virtualMachines/1/networkInterfaces/pool-nic" in p
               for p in sim.calls.arm)
    assert sim.calls.token_failures == 0


def test_resource_group_limits_the_listing(sim, tmp_path):
    env = {"REQUESTS_CA_BUNDLE": str(sim.ca_file), "AZURE_AUTHORITY_HOST": sim.url}
    lines, _ = discover_once(tmp_path, sim, section(sim, extra='  resource-group = "prod-rg"'),
                             env)
    assert sorted(line["labels"]["__meta_azure_machine_name"] for line in lines) == [
        "web-1", "web-2"]
    assert all("/resourcegroups/prod-rg/" in p.lower() for p in sim.calls.arm)


def test_wrong_client_secret_is_reported_without_the_secret(sim, tmp_path):
    env = {"REQUESTS_CA_BUNDLE": str(sim.ca_file), "AZURE_AUTHORITY_HOST": sim.url}
    wrong = "Wrong~secret-value-1234567890"
    path = tmp_path / "trawl.toml"
    path.write_text(section(sim, secret=wrong))
    proc = subprocess.run([sys.executable, "-m", "trawl", "discover", "--once", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "warning: azure/myazure:" in proc.stderr
    assert "AADSTS7000215: Invalid client secret provided" in proc.stderr
    assert wrong not in proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert sim.calls.token_failures >= 1
    assert sim.calls.arm == []


@asynccontextmanager
async def running(config: AzureConfig) -> AsyncIterator[tuple[AzureDiscoverer,
                                                              trawl.DiscoveryManager]]:
    discoverer = AzureDiscoverer(config)
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield discoverer, manager
        nursery.cancel_scope.cancel()


def names(manager: trawl.DiscoveryManager) -> list[str]:
    return sorted(t.labels["__meta_azure_machine_name"] for t in manager.snapshot("azure/t"))


async def eventually(check: Callable[[], bool], within: float = 20.0) -> None:
    """Poll ``check`` (the discoverer changes state from its own task) until it is true."""
    with trio.fail_after(within):
        while not check():
            await trio.sleep(0.05)


async def test_vms_added_and_removed_between_refreshes(sim, sdk_env):
    async with running(config(sim, refresh_interval=0.3)) as (discoverer, manager):
        assert names(manager) == ["pool_0", "pool_1", "web-1", "web-2", "win-1"]
        assert discoverer.health.targets == 5
        sim.add_vm("Prod-RG", VM("web-3", [Nic("web-3-nic", "127.0.0.71")]))
        sim.remove_vm("Prod-RG", "web-2")
        await eventually(lambda: names(manager) == ["pool_0", "pool_1", "web-1", "web-3",
                                                    "win-1"])
        sim.add_scale_set("other-rg", "pool", [])
        await eventually(lambda: names(manager) == ["web-1", "web-3", "win-1"])
        assert not discoverer.health.failing


async def test_failures_keep_targets_back_off_and_recover(sim, sdk_env, caplog):
    caplog.set_level(logging.DEBUG)     # the SDKs' debug logs too: no secret, no token
    # A 3 s refresh interval leaves room for the 1 s, 2 s (±20 %) backoff steps.
    async with running(config(sim, refresh_interval=3.0)) as (discoverer, manager):
        good = names(manager)
        assert len(good) == 5
        # ARM fails: the last good targets stay, the error is reported, retried, backed off.
        sim.fail_arm = (503, "ServiceUnavailable", "The service is temporarily unavailable.")
        await eventually(lambda: discoverer.health.failing)
        assert "ServiceUnavailable" in discoverer.health.last_error
        failures = discoverer.health.failures
        start = trio.current_time()
        await eventually(lambda: discoverer.health.failures >= failures + 2)
        assert trio.current_time() - start > 2.3   # 1 s + 2 s, less 20 % jitter
        assert names(manager) == good

        # The token is revoked and the secret rotated: the token endpoint now refuses the
        # configured secret. The error says so, without the secret.
        with sim.lock:
            sim.tokens.clear()
            sim.client_secret = "rotated-secret-value"
        sim.fail_arm = None
        await eventually(lambda: "AADSTS7000215" in discoverer.health.last_error)
        assert SECRET not in discoverer.health.last_error
        assert names(manager) == good

        # The secret is put back: it recovers by itself.
        with sim.lock:
            sim.client_secret = SECRET
        await eventually(lambda: not discoverer.health.failing)
        assert names(manager) == good
    assert SECRET not in caplog.text
    assert sim.tokens
    assert not any(token in caplog.text for token in sim.tokens)
    assert "recovered" in caplog.text


async def test_blocking_sdk_calls_leave_the_trio_loop_free(sim, sdk_env):
    # While a refresh is under way the Trio loop keeps ticking every 10 ms: with the
    # simulator answering slowly, a blocked loop would count one tick, a free one dozens.
    sim.delay = 0.1   # 15 ARM requests
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    discoverer = AzureDiscoverer(config(sim))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        groups = await discoverer.refresh()
        nursery.cancel_scope.cancel()
    discoverer.close()
    assert len(groups[0].targets) == 5
    assert ticks >= 20


async def test_managed_identity(sim, sdk_env, monkeypatch):
    # The IMDS token endpoint of the simulator stands in for 169.254.169.254.
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", sim.url)
    discoverer = AzureDiscoverer(config(sim, authentication_method="ManagedIdentity",
                                        tenant_id="", client_secret=""))
    try:
        [group] = await discoverer.refresh()
    finally:
        discoverer.close()
    assert sorted(t["__meta_azure_machine_name"] for t in group.targets) == [
        "pool_0", "pool_1", "web-1", "web-2", "win-1"]
    assert all("__meta_azure_tenant_id" not in t for t in group.targets)


async def test_sdk_default_credential_from_the_environment(sim, sdk_env, monkeypatch):
    # DefaultAzureCredential takes the service principal from AZURE_* variables. (The IMDS
    # override keeps its managed-identity step on loopback, should it ever be reached.)
    for key, value in {"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_ID": CLIENT,
                       "AZURE_CLIENT_SECRET": SECRET,
                       "AZURE_POD_IDENTITY_AUTHORITY_HOST": sim.url}.items():
        monkeypatch.setenv(key, value)
    discoverer = AzureDiscoverer(config(sim, authentication_method="SDK", tenant_id="",
                                        client_id="", client_secret=""))
    try:
        [group] = await discoverer.refresh()
    finally:
        discoverer.close()
    assert len(group.targets) == 5
    assert sim.calls.token_failures == 0


async def test_azure_stack_without_its_environment_file_is_a_clear_error(sim, monkeypatch):
    monkeypatch.delenv("AZURE_ENVIRONMENT_FILEPATH", raising=False)
    discoverer = AzureDiscoverer(config(sim, environment="AzureStackCloud",
                                        resource_manager_endpoint=""))
    with pytest.raises(RuntimeError, match="needs AZURE_ENVIRONMENT_FILEPATH"):
        await discoverer.refresh()


class _PrometheusWithEnv(Prometheus):
    env: dict[str, str] = {}

    def start(self) -> Prometheus:
        from tests.servers import require_binary

        binary = require_binary(self.binary)
        self.process = ServerProcess(self.name, self.argv(binary), self.workdir,
                                     env=self.env).start()
        try:
            wait_http(self.ready_url, timeout=30)
        except TimeoutError:
            raise TimeoutError(f"{self.name} did not start:\n{self.process.log_tail()}") from None
        return self


@pytest.mark.servers
def test_same_labels_as_prometheus(sim, sdk_env, tmp_path, monkeypatch):
    # Prometheus 2.42 reaches a non-public Azure through go-autorest's AzureStackCloud
    # environment, read from the file named by AZURE_ENVIRONMENT_FILEPATH; Go trusts the
    # simulator's CA through SSL_CERT_FILE.
    env_file = tmp_path / "azure-env.json"
    env_file.write_text(json.dumps({
        "name": "AzureStackCloud", "resourceManagerEndpoint": f"{sim.url}/",
        "activeDirectoryEndpoint": f"{sim.url}/", "tokenAudience": f"{sim.url}/",
    }))
    prometheus = _PrometheusWithEnv(tmp_path / "prom", [{
        "job_name": "azure",
        "azure_sd_configs": [{
            "environment": "AzureStackCloud", "subscription_id": SUB, "tenant_id": TENANT,
            "client_id": CLIENT, "client_secret": SECRET, "port": 9100,
            "refresh_interval": "5s", "tls_config": {"ca_file": str(sim.ca_file)},
        }],
    }])
    prometheus.env = {"AZURE_ENVIRONMENT_FILEPATH": str(env_file),
                      "SSL_CERT_FILE": str(sim.ca_file)}
    with prometheus:
        theirs = [comparable(t) for t in prometheus.wait_discovered("azure", 5, timeout=40)]
    assert by_name(theirs) == by_name(expected(sim))
    # trawl with the very same environment file and settings (no endpoint override).
    monkeypatch.delenv("AZURE_AUTHORITY_HOST")
    monkeypatch.setenv("AZURE_ENVIRONMENT_FILEPATH", str(env_file))
    ours = trio.run(_refresh, config(sim, environment="AzureStackCloud",
                                     resource_manager_endpoint=""))
    assert by_name(ours) == by_name(theirs)


async def _refresh(c: AzureConfig) -> list[dict[str, str]]:
    discoverer = AzureDiscoverer(c)
    try:
        [group] = await discoverer.refresh()
    finally:
        discoverer.close()
    return [dict(t) for t in group.targets]
