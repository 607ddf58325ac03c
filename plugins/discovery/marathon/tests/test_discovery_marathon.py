"""Marathon discovery against a Marathon simulator, checked against Prometheus 2.42."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trawl
import trio
import trustme
from pydantic import ValidationError
from trawl_discovery_marathon import MarathonConfig, MarathonDiscoverer, app_to_group

from tests.servers.prometheus import Prometheus, comparable
from tests.simulators.marathon import MarathonSimulator, app, task

TRAWL = str(Path(sys.executable).with_name("trawl"))
KAPACITOR_CONF = Path(__file__).resolve().parents[4] / "tests" / "data" / "kapacitor.conf"
PASSWORD = "pa55-basic-secret"
TOKEN = "t0ken-bearer-secret"
DCOS_TOKEN = "dc0s-auth-secret"


def sample_apps() -> list[dict]:
    """Every way Marathon describes ports, with loopback hosts only."""
    return [
        # portDefinitions without requirePorts: the ports come from each task.
        app("/web", [task("web.1", "127.0.0.1", [31000, 31001]),
                     task("web.2", "127.0.0.2", [31002, 31003])],
            labels={"team": "web", "HAPROXY.group": "external"},
            port_definitions=[{"port": 10000, "protocol": "tcp", "labels": {"metrics": "/m"}},
                              {"port": 10001, "protocol": "tcp", "labels": {}}]),
        # Marathon < 1.5: container.docker.portMappings, host port chosen by Mesos.
        app("/db", [task("db.1", "127.0.0.1", [31100])], image="postgres:15",
            docker_port_mappings=[{"containerPort": 5432, "hostPort": 0, "servicePort": 10100,
                                   "protocol": "tcp", "labels": {"svc-name": "pg"}}]),
        # Marathon >= 1.5 on a container network: the task's IP and the container port.
        app("/cache/redis", [task("redis.1", "127.0.0.1", [], ["127.0.0.3"]),
                             task("redis.2", "127.0.0.1", [], ["127.0.0.4"])],
            image="redis:7", network_mode="container",
            port_mappings=[{"containerPort": 6379, "hostPort": 0, "labels": {"role": "cache"}}]),
        # requirePorts: the port of the definition itself.
        app("/fixed", [task("fixed.1", "127.0.0.5", [9100])], require_ports=True,
            port_definitions=[{"port": 9100, "labels": {"exporter": "node"}}]),
        # Only the tasks' ports (no definitions, no mappings).
        app("/legacy", [task("legacy.1", "127.0.0.6", [31200, 31201]),
                        task("legacy.2", "127.0.0.7", [31300, 31301])]),
        app("/idle", []),
        app("/v6", [task("v6.1", "::1", [31400])], port_definitions=[{"port": 0}]),
    ]


SAMPLE_TARGETS = 13


def prometheus_legacy_quirk(labels: dict[str, str]) -> dict[str, str]:
    """Prometheus 2.42 gives every task of a ports-only app the first task's ports.

    trawl uses each task's own ports (README, "Differences from Prometheus"); this maps
    trawl's answer for the sample to what Prometheus shows, to compare everything else.
    """
    if labels.get("__meta_marathon_task") == "legacy.2":
        first = ["31200", "31201"][int(labels["__meta_marathon_port_index"])]
        return {**labels, "__address__": f"127.0.0.7:{first}"}
    return labels


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def sims(ca: trustme.CA):
    """Three Marathons with the sample: basic auth, HTTPS with a bearer token, DC/OS token."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("marathon.test").configure_cert(ctx)
    basic = MarathonSimulator(sample_apps(), basic_auth=("prom", PASSWORD))
    tls = MarathonSimulator(sample_apps(), bearer_token=TOKEN, ssl_context=ctx)
    dcos = MarathonSimulator(sample_apps(), auth_token=DCOS_TOKEN)
    with basic, tls, dcos:
        yield {"basic": basic, "tls": tls, "dcos": dcos}


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("marathon-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def prometheus(sims, ca_file, tmp_path_factory: pytest.TempPathFactory):
    jobs = [
        {"job_name": "basic", "marathon_sd_configs": [{
            "servers": [sims["basic"].url], "refresh_interval": "1s",
            "basic_auth": {"username": "prom", "password": PASSWORD}}]},
        {"job_name": "tls", "marathon_sd_configs": [{
            "servers": [sims["tls"].url], "refresh_interval": "1s",
            "bearer_token": TOKEN,
            "tls_config": {"ca_file": ca_file, "server_name": "marathon.test"}}]},
        {"job_name": "dcos", "marathon_sd_configs": [{
            "servers": [sims["dcos"].url], "refresh_interval": "1s",
            "auth_token": DCOS_TOKEN}]},
    ]
    with Prometheus(tmp_path_factory.mktemp("marathon-prom"), jobs) as prom:
        yield prom


def trawl_discover(tmp_path: Path, config: str) -> tuple[list[dict[str, str]], str]:
    """Run ``trawl discover --once``; return the labels of every target and stderr."""
    path = tmp_path / "trawl.conf"
    path.write_text(config)
    proc = subprocess.run([TRAWL, "discover", "-c", str(path), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return [line["labels"] for line in lines], proc.stdout + proc.stderr


def as_set(targets: list[dict[str, str]]) -> set[frozenset[tuple[str, str]]]:
    return {frozenset(comparable(t).items()) for t in targets}


# ---------------------------------------------------------------------- registration, config
def test_plugin_is_registered():
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "marathon" in kinds


def test_kapacitor_section_loads():
    section = tomllib.loads(KAPACITOR_CONF.read_text())["marathon"][0]
    config = MarathonConfig.model_validate(section)
    assert config.id == "mymarathon"
    assert not config.enabled
    assert (config.timeout, config.refresh_interval) == (30.0, 30.0)
    assert config.bearer_token.get_secret_value() == ""


@pytest.mark.parametrize(("keys", "message"), [
    ({}, "servers: at least one Marathon server"),
    ({"servers": ["127.0.0.1:8080"]}, "must start with http:// or https://"),
    ({"servers": ["http://x"], "bearer-token": "a", "basic-auth-username": "u"},
     "at most one of bearer-token, basic-auth-username"),
    ({"servers": ["http://x"], "basic-auth-password": "p"}, "needs basic-auth-username"),
    ({"servers": ["http://x"], "ssl-cert": "c.pem"}, "ssl-cert and ssl-key"),
    ({"servers": ["http://x"], "servres": ["http://x"]}, "servres"),
])
def test_bad_config_is_a_clear_error(keys, message):
    with pytest.raises(ValidationError) as info:
        MarathonConfig.model_validate(keys)
    assert message in str(info.value)


def test_secrets_are_masked_in_config():
    config = MarathonConfig.model_validate({
        "servers": ["http://x"], "basic-auth-username": "u", "basic-auth-password": PASSWORD})
    assert PASSWORD not in repr(config)
    assert PASSWORD not in json.dumps(config.model_dump(mode="json", by_alias=True))


# ---------------------------------------------------------------------- target building
def test_port_rules_per_app():
    groups = {g.source: g for g in (app_to_group(a) for a in sample_apps())}
    assert set(groups) == {"/web", "/db", "/cache/redis", "/fixed", "/legacy", "/idle", "/v6"}
    web = groups["/web"]
    assert dict(web.labels) == {"__meta_marathon_app": "/web",
                                "__meta_marathon_app_label_team": "web",
                                "__meta_marathon_app_label_HAPROXY_group": "external"}
    assert [t["__address__"] for t in web.targets] == [
        "127.0.0.1:31000", "127.0.0.1:31001", "127.0.0.2:31002", "127.0.0.2:31003"]
    assert web.targets[0] == {"__address__": "127.0.0.1:31000", "__meta_marathon_task": "web.1",
                              "__meta_marathon_port_index": "0",
                              "__meta_marathon_port_definition_label_metrics": "/m"}
    db = groups["/db"].target_labels()
    assert db == [{"__meta_marathon_app": "/db", "__meta_marathon_image": "postgres:15",
                   "__address__": "127.0.0.1:31100", "__meta_marathon_task": "db.1",
                   "__meta_marathon_port_index": "0",
                   "__meta_marathon_port_mapping_label_svc_name": "pg"}]
    assert [t["__address__"] for t in groups["/cache/redis"].targets] == [
        "127.0.0.3:6379", "127.0.0.4:6379"]
    assert groups["/cache/redis"].targets[0]["__meta_marathon_port_mapping_label_role"] == "cache"
    assert [t["__address__"] for t in groups["/fixed"].targets] == ["127.0.0.5:9100"]
    assert [t["__address__"] for t in groups["/legacy"].targets] == [
        "127.0.0.6:31200", "127.0.0.6:31201", "127.0.0.7:31300", "127.0.0.7:31301"]
    assert groups["/idle"].targets == ()
    assert [t["__address__"] for t in groups["/v6"].targets] == ["[::1]:31400"]


def test_bad_app_json_names_the_place():
    with pytest.raises(ValueError, match=r"app '/x': tasks\[0\]\.ports: expected a port"):
        app_to_group({"id": "/x", "tasks": [{"id": "t", "host": "127.0.0.1", "ports": ["80"]}]})


# ---------------------------------------------------------------------- against Prometheus
def test_matches_prometheus(prometheus, sims, ca_file, tmp_path):
    config = f"""
[[marathon]]
  id = "basic"
  servers = ["{sims['basic'].url}"]
  basic-auth-username = "prom"
  basic-auth-password = "{PASSWORD}"

[[marathon]]
  id = "tls"
  servers = ["{sims['tls'].url}"]
  bearer-token = "{TOKEN}"
  ssl-ca = "{ca_file}"
  ssl-server-name = "marathon.test"

[[marathon]]
  id = "dcos"
  servers = ["{sims['dcos'].url}"]
  auth-token = "{DCOS_TOKEN}"
"""
    path = tmp_path / "trawl.conf"
    path.write_text(config)
    proc = subprocess.run([TRAWL, "discover", "-c", str(path), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    ours: dict[str, list[dict[str, str]]] = {"basic": [], "tls": [], "dcos": []}
    for line in proc.stdout.splitlines():
        entry = json.loads(line)
        ours[entry["discoverer"].split("/", 1)[1]].append(entry["labels"])
    for secret in (PASSWORD, TOKEN, DCOS_TOKEN):
        assert secret not in proc.stdout + proc.stderr
    for job in ("basic", "tls", "dcos"):
        theirs = prometheus.wait_discovered(job, SAMPLE_TARGETS)
        assert len(ours[job]) == SAMPLE_TARGETS, job
        assert as_set([prometheus_legacy_quirk(t) for t in ours[job]]) == as_set(theirs), job
    # The simulators saw the path and the credentials both clients sent.
    for sim in sims.values():
        assert {path for path, _ in sim.requests} == {"/v2/apps/?embed=apps.tasks"}


# ---------------------------------------------------------------------- failures
async def wait_for(check, what: str) -> None:
    """Poll ``check`` (health has no event to wait on) for at most 15 s."""
    with trio.fail_after(15):
        while not check():
            await trio.sleep(0.05)


def addresses(manager: trawl.DiscoveryManager, name: str) -> list[str]:
    return sorted(t.labels["__address__"] for t in manager.snapshot(name))


async def test_failures_keep_last_good_targets_and_recover(caplog):
    caplog.set_level(logging.WARNING, "trawl")
    sim = MarathonSimulator([app("/a", [task("a.1", "127.0.0.1", [9001])])],
                            bearer_token=TOKEN)
    sim.start()
    try:
        config = MarathonConfig.model_validate({
            "id": "m", "servers": [sim.url], "refresh-interval": "200ms", "timeout": "2s",
            "bearer-token": TOKEN})
        discoverer = MarathonDiscoverer(config)
        manager = trawl.DiscoveryManager([discoverer])
        name = discoverer.name
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            assert addresses(manager, name) == ["127.0.0.1:9001"]
            assert not discoverer.health.failing

            faults = [
                (lambda: sim.fail(500, json.dumps({"message": "leader election in progress"})),
                 "HTTP 500: leader election in progress"),
                (sim.garbage, "invalid JSON"),
                (lambda: sim.fail(200, json.dumps({"apps": {"id": "/a"}})),
                 "apps: expected a list"),
                (sim.stop, "ConnectError"),
            ]
            for inject, error in faults:
                sim.heal()
                await wait_for(lambda: not discoverer.health.failing, "recovery")
                inject()
                await wait_for(lambda e=error: discoverer.health.failing
                               and e in discoverer.health.last_error, error)
                # The last good targets stay while Marathon fails.
                assert addresses(manager, name) == ["127.0.0.1:9001"]

            sim.heal()
            sim.set_apps([app("/a", [task("a.1", "127.0.0.1", [9001]),
                                     task("a.2", "127.0.0.2", [9002])]),
                          app("/b", [task("b.1", "127.0.0.3", [9003])])])
            sim.start()
            await wait_for(lambda: len(manager.snapshot(name)) == 3, "recovery with new apps")
            assert not discoverer.health.failing
            assert addresses(manager, name) == ["127.0.0.1:9001", "127.0.0.2:9002",
                                                "127.0.0.3:9003"]
            sim.set_apps([app("/b", [task("b.1", "127.0.0.3", [9003])])])
            await wait_for(lambda: len(manager.snapshot(name)) == 1, "app /a removed")
            nursery.cancel_scope.cancel()
    finally:
        sim.stop()
    text = caplog.text
    assert "failed" in text
    assert "recovered" in text
    assert TOKEN not in text


async def test_one_server_down_uses_another():
    up = MarathonSimulator([app("/a", [task("a.1", "127.0.0.1", [9001])])])
    down = MarathonSimulator()  # never started: refused
    with up:
        config = MarathonConfig.model_validate({"servers": [down.url, up.url], "timeout": "2s"})
        discoverer = MarathonDiscoverer(config)
        try:
            for _ in range(4):
                groups = await discoverer.refresh()
                assert [g.source for g in groups] == ["/a"]
        finally:
            await discoverer.aclose()


def test_wrong_credentials_are_reported_without_secrets(tmp_path):
    sim = MarathonSimulator(sample_apps(), basic_auth=("prom", PASSWORD))
    with sim:
        targets, output = trawl_discover(tmp_path, f"""
[[marathon]]
  id = "m"
  servers = ["{sim.url}"]
  basic-auth-username = "prom"
  basic-auth-password = "wrong-{PASSWORD}"
""")
    assert targets == []
    assert "HTTP 401: Invalid username or password." in output
    assert PASSWORD not in output
    assert sim.requests
    assert sim.requests[0][1]["authorization"].startswith("Basic ")


def test_readme_documents_every_key():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name, field in MarathonConfig.model_fields.items():
        assert f"| `{field.alias or name}` |" in readme, name


async def test_retries_back_off_until_the_refresh_interval():
    sim = MarathonSimulator()
    sim.fail(503, json.dumps({"message": "no leader"}))
    with sim:
        config = MarathonConfig.model_validate({"servers": [sim.url], "refresh-interval": "3s"})
        discoverer = MarathonDiscoverer(config)
        manager = trawl.DiscoveryManager([discoverer])
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            assert discoverer.health.failing
            await wait_for(lambda: len(sim.request_times) >= 3, "three attempts")
            nursery.cancel_scope.cancel()
    t = sim.request_times
    # Retries after about 1 s, then 2 s (each +-20 %), not only every refresh-interval.
    assert 0.7 < t[1] - t[0] < 1.6
    assert 1.5 < t[2] - t[1] < 2.9


async def test_credential_files_are_read_on_every_refresh(tmp_path):
    token_file = tmp_path / "token"
    sim = MarathonSimulator([app("/a", [task("a.1", "127.0.0.1", [9001])])], auth_token=TOKEN)
    with sim:
        config = MarathonConfig.model_validate({"servers": [sim.url],
                                                "auth-token-file": str(token_file)})
        discoverer = MarathonDiscoverer(config)
        try:
            with pytest.raises(trawl.TrawlError, match=r"cannot read auth-token-file .*token"):
                await discoverer.refresh()
            token_file.write_text(f"wrong-{TOKEN}\n")
            with pytest.raises(trawl.TrawlError) as info:
                await discoverer.refresh()
            assert "HTTP 401" in str(info.value)
            assert TOKEN not in str(info.value)
            token_file.write_text(f"{TOKEN}\n")  # rotated: used without a restart
            assert [g.source for g in await discoverer.refresh()] == ["/a"]
        finally:
            await discoverer.aclose()
    assert sim.requests[-1][1]["authorization"] == f"token={TOKEN}"
