"""Triton discovery against a CMON simulator (mutual TLS), checked against Prometheus 2.42."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trawl
import trio
import trustme
from pydantic import ValidationError
from trawl_discovery_triton import TritonConfig, TritonDiscoverer, discovery_url

from tests.servers.prometheus import Prometheus, comparable
from tests.simulators.triton import TritonSimulator, compute_node, container

TRAWL = str(Path(sys.executable).with_name("trawl"))
KAPACITOR_CONF = Path(__file__).resolve().parents[4] / "tests" / "data" / "kapacitor.conf"
SUFFIX = "cmon.triton.invalid"  # .invalid never resolves: these targets are only discovered

ACME = [
    container("web-1", groups=["web", "prod"], brand="lx"),
    container("web-2", groups=["web"]),
    container("db-1", groups=["db"], brand="kvm"),
    container("batch-1"),
    container("", groups=["db"], vm_uuid="0b9cdc5b-7c48-4d7e-a54a-5ff6c9f0a4f1"),
]
GLOBEX = [container("shop-1", groups=["shop"], brand="bhyve")]
CNS = [compute_node("cn-a"), compute_node("cn-b")]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEM files: the CA, and a client certificate and key per account."""
    d = tmp_path_factory.mktemp("triton-pki")
    files = {"ca": str(d / "ca.pem")}
    ca.cert_pem.write_to_path(files["ca"])
    for account in ("acme", "globex", "nobody"):
        leaf = TritonSimulator.client_cert(ca, account)
        files[f"{account}-cert"] = str(d / f"{account}.crt")
        files[f"{account}-key"] = str(d / f"{account}.key")
        leaf.cert_chain_pems[0].write_to_path(files[f"{account}-cert"])
        leaf.private_key_pem.write_to_path(files[f"{account}-key"])
    return files


@pytest.fixture(scope="module")
def sim(ca: trustme.CA):
    with TritonSimulator(ca, {"acme": ACME, "globex": GLOBEX}, CNS) as s:
        yield s


# Each job: (trawl keys, expected targets); Prometheus gets the same in its own words.
JOBS = {
    "containers": ({"account": "acme", "version": 1}, 5),
    "groups": ({"account": "acme", "version": 2, "groups": ["web", "db"]}, 4),
    "cn": ({"account": "acme", "role": "cn"}, 2),
    "globex": ({"account": "globex"}, 1),
}


@pytest.fixture(scope="module")
def prometheus(sim, pki, tmp_path_factory: pytest.TempPathFactory):
    jobs = []
    for job, (keys, _) in JOBS.items():
        account = keys["account"]
        jobs.append({"job_name": job, "triton_sd_configs": [{
            "account": account, "dns_suffix": SUFFIX, "endpoint": sim.endpoint,
            "port": sim.port, "refresh_interval": "1s",
            **{k: v for k, v in keys.items() if k != "account"},
            "tls_config": {"ca_file": pki["ca"], "cert_file": pki[f"{account}-cert"],
                           "key_file": pki[f"{account}-key"]}}]})
    with Prometheus(tmp_path_factory.mktemp("triton-prom"), jobs) as prom:
        yield prom


def toml_value(value) -> str:
    return json.dumps(value)


def as_set(targets: list[dict[str, str]]) -> set[frozenset[tuple[str, str]]]:
    return {frozenset(comparable(t).items()) for t in targets}


def config_for(sim: TritonSimulator, pki: dict[str, str], **keys) -> TritonConfig:
    account = keys.get("account", "acme")
    return TritonConfig.model_validate({
        "account": account, "dns-suffix": SUFFIX, "endpoint": sim.endpoint, "port": sim.port,
        "ssl-ca": pki["ca"], "ssl-cert": pki[f"{account}-cert"],
        "ssl-key": pki[f"{account}-key"], **keys})


# ---------------------------------------------------------------------- registration, config
def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "triton" in kinds


def test_kapacitor_section_loads():
    section = tomllib.loads(KAPACITOR_CONF.read_text())["triton"][0]
    config = TritonConfig.model_validate(section)
    assert config.id == "mytriton"
    assert not config.enabled
    assert (config.port, config.version, config.refresh_interval) == (9163, 1, 60.0)
    assert config.role == "container"


@pytest.mark.parametrize(("keys", "message"), [
    ({"dns-suffix": "s", "endpoint": "e"}, "account is required"),
    ({"account": "a", "endpoint": "e"}, "dns-suffix is required"),
    ({"account": "a", "dns-suffix": "s"}, "endpoint is required"),
    ({"account": "a", "dns-suffix": "s", "endpoint": "https://cmon/"}, "must be a host name"),
    ({"account": "a", "dns-suffix": "s", "endpoint": "e", "role": "vm"}, "'container' or 'cn'"),
    ({"account": "a", "dns-suffix": "s", "endpoint": "e", "port": 0}, "not a TCP port"),
    ({"account": "a", "dns-suffix": "s", "endpoint": "e", "ssl-key": "k"}, "ssl-cert and ssl-key"),
    ({"account": "a", "dns-suffix": "s", "endpoint": "e", "dns_suffix": "x"}, "dns_suffix"),
])
def test_bad_config_is_a_clear_error(keys, message):
    with pytest.raises(ValidationError) as info:
        TritonConfig.model_validate(keys)
    assert message in str(info.value)


def test_url_as_prometheus_builds_it():
    base = {"account": "a", "dns-suffix": "s", "endpoint": "cmon.example", "port": 9163}
    assert discovery_url(TritonConfig.model_validate(base)) == \
        "https://cmon.example:9163/v1/discover"
    assert discovery_url(TritonConfig.model_validate(
        {**base, "role": "cn", "version": 2})) == "https://cmon.example:9163/v2/gz/discover"
    assert discovery_url(TritonConfig.model_validate({**base, "groups": ["a b", "c"]})) == \
        "https://cmon.example:9163/v1/discover?groups=a+b%2Cc"
    assert discovery_url(TritonConfig.model_validate({**base, "endpoint": "::1"})) == \
        "https://[::1]:9163/v1/discover"


# ---------------------------------------------------------------------- against Prometheus
def test_matches_prometheus(prometheus, sim, pki, tmp_path):
    sections = []
    for job, (keys, _) in JOBS.items():
        account = keys["account"]
        lines = [f'  id = "{job}"', f'  dns-suffix = "{SUFFIX}"',
                 f'  endpoint = "{sim.endpoint}"', f"  port = {sim.port}",
                 f'  ssl-ca = "{pki["ca"]}"', f'  ssl-cert = "{pki[account + "-cert"]}"',
                 f'  ssl-key = "{pki[account + "-key"]}"']
        lines += [f"  {k} = {toml_value(v)}" for k, v in keys.items()]
        sections.append("[[triton]]\n" + "\n".join(lines))
    path = tmp_path / "trawl.conf"
    path.write_text("\n\n".join(sections) + "\n")
    proc = subprocess.run([TRAWL, "discover", "-c", str(path), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    ours: dict[str, list[dict[str, str]]] = {job: [] for job in JOBS}
    sources = set()
    for line in proc.stdout.splitlines():
        entry = json.loads(line)
        ours[entry["discoverer"].split("/", 1)[1]].append(entry["labels"])
        sources.add(entry["source"])
    assert f"https://127.0.0.1:{sim.port}/v2/discover?groups=web%2Cdb" in sources
    for job, (_, count) in JOBS.items():
        theirs = prometheus.wait_discovered(job, count)
        assert len(ours[job]) == count, job
        assert as_set(ours[job]) == as_set(theirs), job
    web1 = next(t for t in ours["containers"] if t.get("__meta_triton_machine_alias") == "web-1")
    c = ACME[0]
    assert web1 == {
        "__address__": f"{c['vm_uuid']}.{SUFFIX}:{sim.port}",
        "__meta_triton_groups": ",web,prod,",
        "__meta_triton_machine_alias": "web-1",
        "__meta_triton_machine_brand": "lx",
        "__meta_triton_machine_id": c["vm_uuid"],
        "__meta_triton_machine_image": c["vm_image_uuid"],
        "__meta_triton_server_id": c["server_uuid"],
    }
    assert {t["__meta_triton_machine_alias"] for t in ours["cn"]} == {"cn-a", "cn-b"}
    paths = {p for p, _ in sim.requests}
    assert {"/v1/discover", "/v2/discover?groups=web%2Cdb", "/v1/gz/discover"} <= paths
    assert {a for _, a in sim.requests} == {"acme", "globex"}


# ---------------------------------------------------------------------- TLS
async def test_tls_failures_are_reported(ca, pki):
    sim = TritonSimulator(ca, {"acme": ACME}, server_names=("cmon.triton.test",))
    with sim:
        cases = [
            # The certificate names cmon.triton.test, not 127.0.0.1.
            ({}, "certificate verify failed"),
            ({"ssl-server-name": "cmon.triton.test"}, None),
            ({"ssl-server-name": "cmon.triton.test", "ssl-cert": "", "ssl-key": ""},
             "CMON requires a client certificate"),
            ({"insecure-skip-verify": True}, None),
            ({"ssl-server-name": "cmon.triton.test", "account": "nobody"},
             "HTTP 403: NotAuthorized: account 'nobody' is not known"),
            ({"ssl-ca": "/nonexistent/ca.pem"}, "TLS settings (ssl-ca, ssl-cert, ssl-key)"),
        ]
        for keys, error in cases:
            discoverer = TritonDiscoverer(config_for(sim, pki, **keys))
            try:
                if error is None:
                    [group] = await discoverer.refresh()
                    assert len(group.targets) == len(ACME), keys
                else:
                    with pytest.raises(trawl.TrawlError) as info:
                        await discoverer.refresh()
                    assert error in str(info.value), keys
            finally:
                await discoverer.aclose()


# ---------------------------------------------------------------------- failures
async def wait_for(check, what: str) -> None:
    """Poll ``check`` (health has no event to wait on) for at most 15 s."""
    with trio.fail_after(15):
        while not check():
            await trio.sleep(0.05)


def aliases(manager: trawl.DiscoveryManager, name: str) -> list[str]:
    return sorted(t.labels.get("__meta_triton_machine_alias", "") for t in manager.snapshot(name))


async def test_failures_keep_last_good_targets_and_recover(ca, pki, caplog):
    caplog.set_level(logging.WARNING, "trawl")
    sim = TritonSimulator(ca, {"acme": ACME[:2]})
    sim.start()
    try:
        discoverer = TritonDiscoverer(config_for(sim, pki, **{"refresh-interval": "200ms"}))
        manager = trawl.DiscoveryManager([discoverer])
        name = discoverer.name
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            assert aliases(manager, name) == ["web-1", "web-2"]
            assert not discoverer.health.failing
            faults = [
                (lambda: sim.fail(500), "HTTP 500: InternalError: Internal Server Error"),
                (lambda: sim.fail(503, "upstream connect error"),
                 "HTTP 503: upstream connect error"),
                (sim.garbage, "invalid JSON"),
                (lambda: sim.fail(200, '{"containers": [1]}'), "containers[0]: expected an object"),
                (sim.stop, "ConnectError"),
            ]
            for inject, error in faults:
                sim.heal()
                await wait_for(lambda: not discoverer.health.failing, "recovery")
                inject()
                await wait_for(lambda e=error: discoverer.health.failing
                               and e in discoverer.health.last_error, error)
                assert aliases(manager, name) == ["web-1", "web-2"]
            sim.heal()
            sim.set_containers({"acme": ACME[1:4]})
            sim.start()
            await wait_for(lambda: aliases(manager, name) == ["batch-1", "db-1", "web-2"],
                           "recovery with new containers")
            assert not discoverer.health.failing
            sim.set_containers({"acme": []})
            await wait_for(lambda: aliases(manager, name) == [], "every container gone")
            nursery.cancel_scope.cancel()
    finally:
        sim.stop()
    assert "failed" in caplog.text
    assert "recovered" in caplog.text


def test_readme_documents_every_key():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name, field in TritonConfig.model_fields.items():
        assert f"| `{field.alias or name}` |" in readme, name
