"""Kubernetes discovery against the API-server simulator, and against vmagent 1.79."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trawl
import trio
import yaml
from trawl_discovery_kubernetes import KubernetesConfig, KubernetesDiscoverer

from tests.servers import free_port, wait_until
from tests.servers.prometheus import VMAgent, comparable
from tests.simulators import kubernetes as k8s

TOKEN = "s3cr3t"
ROLES = ["node", "pod", "service", "endpoints", "endpointslice", "ingress"]
P = "__meta_kubernetes_"
TRAWL = str(Path(sys.executable).with_name("trawl"))


@pytest.fixture
def sim(tmp_path: Path):
    with k8s.KubernetesSimulator(tmp_path / "sim", bookmark_interval=0.2) as s:
        k8s.populate(s)
        yield s


def settings(sim: k8s.KubernetesSimulator, **extra: Any) -> dict[str, Any]:
    return {"api-servers": [sim.url], "token": TOKEN, "ca-path": str(sim.ca_path),
            "watch-timeout": "5s", "max-backoff": "1s", **extra}


@asynccontextmanager
async def discovering(**config: Any) -> AsyncIterator[tuple[KubernetesDiscoverer,
                                                            trawl.DiscoveryManager]]:
    d = KubernetesDiscoverer(KubernetesConfig.model_validate({"id": "k", **config}))
    manager = trawl.DiscoveryManager([d])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield d, manager
        nursery.cancel_scope.cancel()


def targets(manager: trawl.DiscoveryManager) -> list[dict[str, str]]:
    return [t.labels for t in manager.snapshot("kubernetes/k")]


async def until(check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll ``check`` (the simulator runs in threads, so there is no event to wait on)."""
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.02)


def by_address(ts: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {t["__address__"]: t for t in ts}


# --- the plugin and its configuration --------------------------------------------------

def test_plugin_is_registered() -> None:
    kinds = {k for p in trawl.list_plugins(trawl.get_plugin_manager()) for k in p["kinds"]}
    assert "kubernetes" in kinds


def registry() -> trawl.Registry:
    return trawl.collect(trawl.get_plugin_manager())


def test_kapacitor_sample_section_loads() -> None:
    with open(Path(__file__).resolve().parents[4] / "tests" / "data" / "kapacitor.conf", "rb") as f:
        section = tomllib.load(f)["kubernetes"]
    assert isinstance(section, dict)  # a single [kubernetes] table
    config = trawl.parse_config({"kubernetes": section}, registry())
    ks = [c for cls, c in config.discoverers if cls is KubernetesDiscoverer]
    assert len(ks) == 1
    assert ks[0].enabled is False
    assert ks[0].role == "pod"


def test_single_table_and_array_and_kapacitor_resource_names() -> None:
    one = trawl.parse_config({"kubernetes": {
        "api-servers": ["http://127.0.0.1:1"], "resource": "endpoint"}}, registry())
    assert [c.role for _, c in one.discoverers] == ["endpoints"]
    many = trawl.parse_config({"kubernetes": [
        {"id": "a", "api-servers": ["http://127.0.0.1:1"], "resource": "node"},
        {"id": "b", "in-cluster": True, "resource": "endpointslice", "namespace": "x",
         "namespaces": ["y", "x"], "label-selector": "app=web", "field-selector": "a=b"}]},
        registry())
    assert [c.role for _, c in many.discoverers] == ["node", "endpointslice"]
    assert many.discoverers[1][1].all_namespaces == ["x", "y"]


@pytest.mark.parametrize(("section", "needle"), [
    ({"api-servers": ["http://127.0.0.1:1"], "resource": "deployment"}, "resource"),
    ({"resource": "pod"}, "api-servers"),
    ({"api-servers": ["127.0.0.1:6443"]}, "api-servers"),
    ({"api-servers": ["http://127.0.0.1:1"], "tokne": "x"}, "tokne"),
])
def test_bad_config_is_a_clear_error(section: dict[str, Any], needle: str) -> None:
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config({"kubernetes": section}, registry(), "k.conf")
    text = "\n".join(info.value.problems)
    assert "k.conf" in text
    assert "kubernetes" in text
    assert needle in text


def test_readme_documents_every_key() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    readme = readme[readme.index("## Configuration"):readme.index("## Connection")]
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", readme, re.MULTILINE))
    keys = {f.alias or name for name, f in KubernetesConfig.model_fields.items()}
    assert keys == documented


def test_token_is_secret() -> None:
    c = KubernetesConfig.model_validate({"api-servers": ["http://127.0.0.1:1"], "token": TOKEN})
    assert TOKEN not in repr(c)
    assert TOKEN not in json.dumps(c.public())


# --- labels per role -------------------------------------------------------------------

async def test_pod_role_labels(sim: k8s.KubernetesSimulator) -> None:
    async with discovering(**settings(sim, resource="pod")) as (_, manager):
        ts = targets(manager)
    web0 = [t for t in ts if t[P + "pod_name"] == "web-7d9f-0"]
    # 2 + 3 ports, one portless container, one portless and one ported init container
    assert sorted(t["__address__"] for t in web0) == sorted([
        "127.1.0.10:8080", "127.1.0.10:9090", "127.1.0.10:15000", "127.1.0.10:15090",
        "127.1.0.10:5353", "127.1.0.10", "127.1.0.10", "127.1.0.10:7070"])
    metrics = by_address(web0)["127.1.0.10:9090"]
    assert metrics == {**metrics, P + "namespace": "prod", P + "pod_ip": "127.1.0.10",
                       P + "pod_phase": "Running", P + "pod_ready": "true",
                       P + "pod_node_name": "node-a", P + "pod_host_ip": "127.0.10.1",
                       P + "pod_controller_kind": "ReplicaSet",
                       P + "pod_controller_name": "web-7d9f",
                       P + "pod_container_name": "web", P + "pod_container_init": "false",
                       P + "pod_container_port_name": "metrics",
                       P + "pod_container_port_number": "9090",
                       P + "pod_container_port_protocol": "TCP",
                       P + "pod_container_image": "registry.local/web:2.3",
                       P + "pod_label_app_kubernetes_io_name": "web",
                       P + "pod_labelpresent_app_kubernetes_io_name": "true",
                       P + "pod_annotation_prometheus_io_port": "9090",
                       P + "pod_annotationpresent_prometheus_io_port": "true"}
    assert metrics[P + "pod_uid"] == sim.get("pods", "prod", "web-7d9f-0")["metadata"]["uid"]
    assert metrics[P + "pod_container_id"].startswith("containerd://")
    assert by_address(web0)["127.1.0.10:7070"][P + "pod_container_init"] == "true"
    portless = [t for t in web0 if t["__address__"] == "127.1.0.10"]
    assert {t[P + "pod_container_name"] for t in portless} == {"logger", "migrate"}
    assert P + "pod_container_port_number" not in portless[0]
    assert by_address(ts)["127.1.0.12:8080"][P + "pod_ready"] == "false"
    assert not [t for t in ts if t[P + "pod_name"] == "pending-1"]  # no IP, no target
    assert all(ip.startswith("127.") for t in ts for ip in [t["__address__"]])


async def test_other_roles_labels(sim: k8s.KubernetesSimulator) -> None:
    found = {}
    for role in ["node", "service", "endpoints", "endpointslice", "ingress"]:
        async with discovering(**settings(sim, resource=role)) as (_, manager):
            found[role] = targets(manager)
    node_a = by_address(found["node"])["127.0.10.1:10250"]
    assert node_a["instance"] == "node-a"
    assert node_a[P + "node_address_InternalIP"] == "127.0.10.1"  # the first of its type
    assert node_a[P + "node_address_ExternalIP"] == "127.0.20.1"
    assert node_a[P + "node_address_InternalDNS"] == "node-a.cluster.internal"
    assert node_a[P + "node_address_Hostname"] == "node-a"
    # an empty label value is no label (trawl's core drops them, as Prometheus does)
    assert P + "node_label_node_role_kubernetes_io_control_plane" not in node_a
    assert node_a[P + "node_labelpresent_node_role_kubernetes_io_control_plane"] == "true"
    assert by_address(found["node"])["127.0.10.2:10255"][P + "node_provider_id"] == "sim://node-b"

    svc = {(t[P + "service_name"], t[P + "service_port_number"]): t for t in found["service"]}
    assert svc[("web", "53")][P + "service_port_protocol"] == "UDP"
    assert svc[("web", "80")]["__address__"] == "web.prod.svc:80"
    assert svc[("web", "80")][P + "service_cluster_ip"] == "127.2.0.10"
    assert svc[("edge", "443")][P + "service_loadbalancer_ip"] == "127.3.0.1"
    assert svc[("upstream", "8443")][P + "service_external_name"] == "upstream.example.invalid"
    assert P + "service_cluster_ip" not in svc[("upstream", "8443")]

    eps = found["endpoints"]
    ready = [t for t in eps if t.get(P + "endpoint_ready") == "true"
             and t[P + "endpoints_name"] == "web"]
    not_ready = [t for t in eps if t.get(P + "endpoint_ready") == "false"]
    assert len(ready) == 4
    assert len(not_ready) == 2
    t = by_address(not_ready)["127.1.0.12:9090"]
    assert t[P + "endpoint_address_target_kind"] == "Pod"
    assert t[P + "endpoint_address_target_name"] == "web-7d9f-2"
    assert t[P + "pod_container_port_name"] == "metrics"
    assert t[P + "service_label_app_kubernetes_io_name"] == "web"  # from the service
    # container ports the endpoints do not list still become targets (sidecar ports)
    extra = [t for t in eps if P + "endpoint_ready" not in t]
    assert {t["__address__"] for t in extra} >= {"127.1.0.10:15000", "127.1.0.20:9187"}
    bare = by_address(eps)["127.4.0.1:9000"]
    assert P + "endpoint_address_target_kind" not in bare
    assert P + "pod_name" not in bare

    slices = found["endpointslice"]
    term = by_address([t for t in slices if t.get(P + "endpointslice_port") == "8080"])
    assert term["127.1.0.11:8080"][P + "endpointslice_endpoint_conditions_terminating"] == "true"
    assert term["127.1.0.12:8080"][P + "endpointslice_endpoint_conditions_ready"] == "false"
    assert term["127.1.0.10:8080"][P + "endpointslice_port_app_protocol"] == "http"
    assert term["127.1.0.10:8080"][P + "service_name"] == "web"

    ing = {(t[P + "ingress_host"], t[P + "ingress_path"]): t for t in found["ingress"]}
    assert set(ing) == {("web.example.invalid", "/"), ("web.example.invalid", "/api"),
                        ("admin.example.invalid", "/"), ("jobs.local.invalid", "/")}
    assert ing[("web.example.invalid", "/api")][P + "ingress_scheme"] == "https"
    assert ing[("web.example.invalid", "/api")][P + "ingress_class_name"] == "nginx"
    assert ing[("jobs.local.invalid", "/")][P + "ingress_scheme"] == "http"
    assert P + "ingress_class_name" not in ing[("jobs.local.invalid", "/")]


async def test_namespaces_and_selectors_restrict_discovery(sim: k8s.KubernetesSimulator
                                                           ) -> None:
    async with discovering(**settings(sim, resource="pod", namespace="prod")) as (_, m):
        assert {t[P + "namespace"] for t in targets(m)} == {"prod"}
        await until(lambda: bool(sim.watch_requests("pods")))
    assert {q.get("labelSelector") for q in sim.watch_requests("pods")} == {None}
    paths = {p for p, _, _ in sim.requests if p.endswith("/pods")}
    assert paths == {"/api/v1/namespaces/prod/pods"}
    async with discovering(**settings(sim, resource="pod", namespaces=["jobs", "kube-system"],
                                      **{"label-selector": "job-name in (x,y)"})) as (_, m):
        assert {t[P + "pod_name"] for t in targets(m)} == {"batch-x"}
    async with discovering(**settings(sim, resource="pod", **{
            "field-selector": "spec.nodeName=node-b,status.phase!=Failed"})) as (_, m):
        assert {t[P + "pod_name"] for t in targets(m)} == {"web-7d9f-1", "db-0"}


async def test_lists_page_by_page(sim: k8s.KubernetesSimulator) -> None:
    async with discovering(**settings(sim, resource="pod", **{"list-limit": 2})) as (d, m):
        assert len({t[P + "pod_name"] for t in targets(m)}) == 6  # all but the pending one
        lists = [q for p, q, _ in sim.requests if "watch" not in q]
        assert [q.get("continue") for q in lists] == [None, "page-1", "page-2", "page-3"]
        assert {q["limit"] for q in lists} == {"2"}
        # a continue token that expired: retried with backoff, reported, recovered
        sim.expire_continues = True
        sim.set_outage(True)
        await until(lambda: d.health.failing)
        sim.add("pods", k8s.pod("late", "jobs", "127.1.1.20"))
        sim.compact()
        sim.set_outage(False)
        await until(lambda: "continue" in d.health.last_error)
        assert "410" in d.health.last_error
        sim.expire_continues = False
        await until(lambda: "127.1.1.20:8080" in by_address(targets(m)))
        await until(lambda: not d.health.failing)


# --- list, watch, relist, failure ------------------------------------------------------

async def test_watch_follows_changes_and_bookmarks(sim: k8s.KubernetesSimulator) -> None:
    async with discovering(**settings(sim, resource="pod", namespace="jobs")) as (d, m):
        assert {t[P + "pod_name"] for t in targets(m)} == {"batch-x"}
        sim.add("pods", k8s.pod("new-1", "jobs", "127.1.1.6", labels={"app": "n"}))
        await until(lambda: "127.1.1.6:8080" in by_address(targets(m)))
        changed = sim.get("pods", "jobs", "new-1")
        changed["metadata"]["labels"]["app"] = "m"
        sim.modify("pods", changed)
        await until(lambda: by_address(targets(m)).get("127.1.1.6:8080", {}).get(
            P + "pod_label_app") == "m")
        sim.delete("pods", "jobs", "new-1")
        await until(lambda: "127.1.1.6:8080" not in by_address(targets(m)))
        # changes elsewhere reach us only as bookmarks, which move our resource version
        sim.add("pods", k8s.pod("elsewhere", "prod", "127.1.0.99"))
        await until(lambda: d.watchers[0].resource_version == str(sim.rv))
    watches = sim.watch_requests("pods")
    assert watches
    assert all(q["allowWatchBookmarks"] == "true" and q["resourceVersion"]
                           and q["timeoutSeconds"] for q in watches)


@pytest.mark.parametrize("role", ["endpoints", "endpointslice"])
async def test_endpoints_follow_their_pods_and_service(sim: k8s.KubernetesSimulator,
                                                       role: str) -> None:
    async with discovering(**settings(sim, resource=role, namespace="prod")) as (_, m):
        def db() -> dict[str, str]:
            return by_address(targets(m)).get("127.1.0.20:5432", {})
        assert db()[P + "pod_label_app"] == "db"
        pod = sim.get("pods", "prod", "db-0")
        pod["metadata"]["labels"]["app"] = "database"
        sim.modify("pods", pod)
        await until(lambda: db().get(P + "pod_label_app") == "database")
        svc = sim.get("services", "prod", "db")
        svc["metadata"]["labels"] = {"owner": "dba"}
        sim.modify("services", svc)
        await until(lambda: db().get(P + "service_label_owner") == "dba")
        sim.delete("services", "prod", "db")
        await until(lambda: P + "service_name" not in db())
        # a pod the endpoints name before it is known gets its labels once it appears
        sim.delete("pods", "prod", "db-0")
        await until(lambda: P + "pod_name" not in db())
        sim.add("pods", pod)
        await until(lambda: db().get(P + "pod_name") == "db-0")


async def test_gone_relists_and_keeps_targets_through_an_outage(
        sim: k8s.KubernetesSimulator, caplog: pytest.LogCaptureFixture) -> None:
    async with discovering(**settings(sim, resource="pod", namespace="prod")) as (d, m):
        sim.add("pods", k8s.pod("gone-1", "prod", "127.1.0.50"))
        await until(lambda: "127.1.0.50:8080" in by_address(targets(m)))
        lists = len([q for _, q, _ in sim.requests if "watch" not in q])
        # the authority goes away: targets stay, health says why
        sim.set_outage(True)
        await until(lambda: d.health.failing and "503" in d.health.last_error)
        assert TOKEN not in d.health.last_error
        assert "127.1.0.50:8080" in by_address(targets(m))
        # meanwhile the cluster changes and its history is compacted: 410 Gone over HTTP
        sim.delete("pods", "prod", "gone-1")
        sim.compact()
        sim.set_outage(False)
        await until(lambda: "127.1.0.50:8080" not in by_address(targets(m)))
        await until(lambda: not d.health.failing)
        assert ("/api/v1/namespaces/prod/pods", 410) in sim.responses
        # again, with 410 sent as an ERROR event inside the watch stream
        sim.gone_as_event = True
        sim.set_outage(True)
        await until(lambda: d.health.failing)
        sim.add("pods", k8s.pod("gone-2", "prod", "127.1.0.51"))
        sim.compact()
        sim.set_outage(False)
        await until(lambda: "127.1.0.51:8080" in by_address(targets(m)))
        assert sim.gone_events == 1
    assert len([q for _, q, _ in sim.requests if "watch" not in q]) == lists + 2
    assert "recovered" in caplog.text


async def test_wrong_token_is_reported_without_the_token(sim: k8s.KubernetesSimulator) -> None:
    async with discovering(**settings(sim, resource="node", token="wrong-token")) as (d, m):
        assert targets(m) == []
        assert d.health.failing
        assert "401" in d.health.last_error
        assert "wrong-token" not in d.health.last_error


async def test_failover_to_the_next_api_server(sim: k8s.KubernetesSimulator) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    async with discovering(**settings(sim, resource="node", **{"api-servers": [dead, sim.url]})
                           ) as (d, m):
        await until(lambda: len(targets(m)) == 3)
        await until(lambda: not d.health.failing)


async def test_in_cluster_reads_and_follows_the_rotated_token(
        sim: k8s.KubernetesSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(sim.port))
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("token-1\n")
    (sa / "ca.crt").write_bytes(sim.ca_path.read_bytes())
    sim.tokens = {"token-1"}
    config = {"in-cluster": True, "service-account-dir": str(sa),
              "resource": "node", "watch-timeout": "5s", "max-backoff": "1s"}
    async with discovering(**config) as (d, m):
        assert len(targets(m)) == 3
        sim.tokens = {"token-2"}  # rotated: the old token is refused from now on
        (sa / "token").write_text("token-2\n")
        sim.set_outage(True)  # cut the watch so that a new request is made
        await until(lambda: d.health.failing)
        sim.set_outage(False)
        sim.add("nodes", k8s.node("node-d", "127.0.10.4"))
        await until(lambda: len(targets(m)) == 4)
        await until(lambda: not d.health.failing)
    # only token-2 is accepted now, so the new node came through the rotated token
    assert sim.requests[-1][2] is True


async def test_missing_service_account_token_is_retried(
        sim: k8s.KubernetesSimulator, tmp_path: Path) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(sim.ca_path.read_bytes())
    config = {"in-cluster": True, "api-servers": [sim.url], "service-account-dir": str(sa),
              "resource": "node", "max-backoff": "1s"}
    async with discovering(**config) as (d, m):
        assert d.health.failing
        assert str(sa / "token") in d.health.last_error
        (sa / "token").write_text(TOKEN)  # the kubelet mounts it a moment later
        await until(lambda: len(targets(m)) == 3)
        await until(lambda: not d.health.failing)


async def test_an_object_of_unexpected_shape_is_skipped(
        sim: k8s.KubernetesSimulator, caplog: pytest.LogCaptureFixture) -> None:
    odd = k8s.pod("odd", "jobs", "127.1.1.9")
    odd["spec"]["containers"] = "not a list"
    sim.add("pods", odd)
    async with discovering(**settings(sim, resource="pod", namespace="jobs")) as (_, m):
        assert {t[P + "pod_name"] for t in targets(m)} == {"batch-x"}
        sim.add("pods", k8s.pod("fine", "jobs", "127.1.1.10"))
        await until(lambda: "127.1.1.10:8080" in by_address(targets(m)))
    assert "cannot read pods jobs/odd" in caplog.text


async def test_kubeconfig(sim: k8s.KubernetesSimulator, tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sim",
        "clusters": [{"name": "c", "cluster": {"server": sim.url,
                                               "certificate-authority": str(sim.ca_path)}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "sim", "context": {"cluster": "c", "user": "u"}}]}))
    async with discovering(kubeconfig=str(tmp_path / "kubeconfig"), resource="ingress") as (d, m):
        assert len(targets(m)) == 4
        assert not d.health.failing


async def test_kubeconfig_client_certificate(sim: k8s.KubernetesSimulator,
                                             tmp_path: Path) -> None:
    cert, key = sim.client_certificate("trawl")
    b64 = base64.b64encode
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sim",
        "clusters": [{"name": "c", "cluster": {
            "server": sim.url, "certificate-authority-data": b64(
                sim.ca_path.read_bytes()).decode()}}],
        "users": [{"name": "u", "user": {"client-certificate-data": b64(cert).decode(),
                                         "client-key-data": b64(key).decode()}}],
        "contexts": [{"name": "sim", "context": {"cluster": "c", "user": "u"}}]}))
    async with discovering(kubeconfig=str(tmp_path / "kubeconfig"), resource="node") as (d, m):
        assert len(targets(m)) == 3
        assert not d.health.failing
    assert sim.requests[0][2] is True  # no token: the certificate authenticated


# --- the command line and the reference ------------------------------------------------

def discover_once(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([TRAWL, "discover", "-c", str(path), "--once"], capture_output=True,
                         text=True, timeout=60, check=True)
    assert TOKEN not in out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


# Labels only one side has, by role: where vmagent 1.79 and Prometheus 2.42 differ, trawl
# follows Prometheus's documented labels (see the README, "Compared with vmagent").
TRAWL_ONLY = {
    "pod": {P + "pod_container_image", P + "pod_container_id"},
    "service": {P + "service_port_number", P + "service_loadbalancer_ip"},
    "endpoints": {P + "pod_container_image",
                  # on targets for container ports that the endpoints do not list:
                  P + "endpoints_name", re.compile(P + "endpoints_label(present)?_.*")},
    "endpointslice": {P + "pod_container_image", P + "endpointslice_endpoint_conditions_serving",
                      P + "endpointslice_endpoint_conditions_terminating",
                      P + "endpointslice_name", P + "endpointslice_address_type"},
    "ingress": set(),
    "node": set(),
}
VMAGENT_ONLY = {
    "endpoints": {P + "service_cluster_ip", P + "service_type"},
    "endpointslice": {P + "service_cluster_ip", P + "service_type",
                      re.compile(P + "endpointslice_label(present)?_.*")},
}


def comparable_nonempty(labels: dict[str, str]) -> dict[str, str]:
    """vmagent lists labels with empty values; trawl's core leaves them out (an empty
    value is no label, as in Prometheus's label builder), so they are not compared."""
    return {k: v for k, v in comparable(labels).items() if v}


def _allowed(name: str, allowed: set[Any]) -> bool:
    return any(a == name if isinstance(a, str) else a.fullmatch(name) for a in allowed)


IDENTITY = [P + "pod_name", P + "pod_container_name", P + "pod_container_init",
            P + "endpoint_ready", P + "endpoint_port_name", P + "endpointslice_port_name",
            P + "endpointslice_endpoint_conditions_ready", P + "ingress_path",
            P + "service_port_name"]


def _paired(ours: list[dict[str, str]], theirs: list[dict[str, str]]
            ) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Pairs of (ours, theirs) for the same target: address plus identifying labels."""
    def key(t: dict[str, str]) -> str:
        return json.dumps([t["__address__"], *(t.get(n) or None for n in IDENTITY)])
    mine: dict[str, list[dict[str, str]]] = {}
    for t in ours:
        mine.setdefault(key(t), []).append(comparable_nonempty(t))
    ref: dict[str, list[dict[str, str]]] = {}
    for t in theirs:
        ref.setdefault(key(t), []).append(comparable_nonempty(t))
    assert sorted(mine) == sorted(ref)
    pairs = []
    for k in mine:
        assert len(mine[k]) == len(ref[k]), k
        pairs += zip(sorted(mine[k], key=json.dumps), sorted(ref[k], key=json.dumps),
                     strict=True)
    return pairs


def assert_same_targets(role: str, ours: list[dict[str, str]], theirs: list[dict[str, str]]
                        ) -> None:
    """Target by target: equal labels, except for the documented one-sided labels."""
    assert len(ours) == len(theirs), role
    for mine, ref in _paired(ours, theirs):
        for name in mine.keys() - ref.keys():
            assert _allowed(name, TRAWL_ONLY[role]), (role, name, mine)
        for name in ref.keys() - mine.keys():
            assert _allowed(name, VMAGENT_ONLY.get(role, set())), (role, name, ref)
        for name in mine.keys() & ref.keys():
            assert mine[name] == ref[name], (role, name, mine, ref)


def _normalized(ts: list[dict[str, str]], one_sided: set[Any]) -> Counter[str]:
    return Counter(json.dumps({k: v for k, v in comparable_nonempty(t).items()
                               if not _allowed(k, one_sided)}, sort_keys=True) for t in ts)


class WatchingVMAgent(VMAgent):
    """vmagent applying Kubernetes changes every second instead of every 30 s."""

    def argv(self, binary: str) -> list[str]:
        return [*super().argv(binary), "-promscrape.kubernetesSDCheckInterval=1s"]


def change_cluster(sim: k8s.KubernetesSimulator) -> None:
    """Changes of every kind, streamed to both watchers."""
    web2 = sim.get("pods", "prod", "web-7d9f-2")
    for cond in web2["status"]["conditions"]:
        if cond["type"] in ("Ready", "ContainersReady"):
            cond["status"] = "True"
    web2["metadata"]["labels"]["tier"] = "back"
    sim.modify("pods", web2)
    eps = sim.get("endpoints", "prod", "web")
    subset = eps["subsets"][0]
    subset["addresses"] += subset.pop("notReadyAddresses")
    sim.modify("endpoints", eps)
    sim.delete("services", "prod", "edge")
    sim.delete("pods", "jobs", "batch-x")
    sim.add("pods", k8s.pod("api-0", "jobs", "127.1.1.7", containers=[k8s.container(
        "api", "registry.local/api:3", [("grpc", 9000, "TCP"), ("metrics", 9001, "TCP")])],
        owner=("DaemonSet", "api")))
    node_b = sim.get("nodes", "", "node-b")
    node_b["metadata"]["labels"]["drained"] = "yes"
    sim.modify("nodes", node_b)
    sim.add("ingresses", k8s.ingress("new", "prod", [("new.example.invalid", ["/x"])],
                                     tls_hosts=["new.example.invalid"]))


@pytest.mark.servers
def test_same_targets_as_vmagent(sim: k8s.KubernetesSimulator, tmp_path: Path) -> None:
    jobs = {role: {"resource": role} for role in ROLES}
    jobs["selected"] = {"resource": "pod", "namespaces": ["prod", "jobs"],
                        "label-selector": "app.kubernetes.io/name=web,tier!=back"}
    lines = []
    for job, extra in jobs.items():
        lines += [f'[[kubernetes]]\nid = "{job}"\napi-servers = ["{sim.url}"]\n'
                  f'token = "{TOKEN}"\nca-path = "{sim.ca_path}"\nresource = "{extra["resource"]}"']
        if "namespaces" in extra:
            lines += [f'namespaces = {json.dumps(extra["namespaces"])}',
                      f'label-selector = "{extra["label-selector"]}"']
    (tmp_path / "trawl.conf").write_text("\n".join(lines) + "\n")

    def ours() -> dict[str, list[dict[str, str]]]:
        found: dict[str, list[dict[str, str]]] = {job: [] for job in jobs}
        for t in discover_once(tmp_path / "trawl.conf"):
            found[t["discoverer"].split("/", 1)[1]].append(t["labels"])
        return found

    def agree(vm: VMAgent, found: dict[str, list[dict[str, str]]]) -> bool:
        for job, extra in jobs.items():
            assert_same_targets(extra["resource"], found[job], vm.discovered(job))
        return True

    def follows(vm: VMAgent, before: dict[str, list[dict[str, str]]],
                after: dict[str, list[dict[str, str]]]) -> bool:
        """Every target we find after the changes, vmagent finds too. vmagent also lists
        dropped targets for 10 minutes after they vanish, including intermediate states
        (a pod already changed while its endpoints were not yet), so its extras are only
        checked to be at addresses that we knew."""
        for job, extra in jobs.items():
            one_sided = TRAWL_ONLY[extra["resource"]] | VMAGENT_ONLY.get(extra["resource"],
                                                                         set())
            theirs = _normalized(vm.discovered(job), one_sided)
            now = _normalized(after[job], one_sided)
            assert not now - theirs, (job, now - theirs)
            known = {t["__address__"] for t in before[job] + after[job]}
            assert {json.loads(t)["__address__"] for t in theirs - now} <= known, job
        return True

    scrape_configs = []
    for job, extra in jobs.items():
        sd: dict[str, Any] = {"api_server": sim.url, "role": extra["resource"],
                              "bearer_token": TOKEN, "tls_config": {"ca_file": str(sim.ca_path)}}
        if "namespaces" in extra:
            sd["namespaces"] = {"names": extra["namespaces"]}
            sd["selectors"] = [{"role": "pod", "label": extra["label-selector"]}]
        scrape_configs.append({"job_name": job, "kubernetes_sd_configs": [sd]})
    before = ours()
    # the three web pods (8 + 6 + 6 targets), nothing from other namespaces or pods
    assert len(before["selected"]) == 20
    with WatchingVMAgent(tmp_path / "vmagent", scrape_configs) as vm:
        for job in jobs:
            assert before[job], job
            vm.wait_discovered(job, len(before[job]))
        agree(vm, before)
        # then both follow the same watch streams to the same answer
        change_cluster(sim)
        after = ours()
        assert len(after["selected"]) == 14  # web-7d9f-2 left the selection
        try:
            wait_until(lambda: follows(vm, before, after), 30, "vmagent to follow the changes")
        finally:
            follows(vm, before, after)


# --- scale -----------------------------------------------------------------------------

def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@pytest.mark.slow
def test_scale_5000_pods_then_10_percent_changed(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    n, changed = 5000, 500
    with k8s.KubernetesSimulator(tmp_path / "sim", bookmark_interval=5) as sim:
        for i in range(n):
            sim.add("pods", k8s.pod(
                f"app-{i}", f"ns-{i % 20}", f"127.{10 + i // 65000}.{(i // 250) % 256}.{i % 250}",
                node=f"node-{i % 50}", labels={"app": f"app-{i % 100}", "version": "v1"},
                annotations={"prometheus.io/scrape": "true"},
                owner=("ReplicaSet", f"rs-{i % 100}")))
        conf = tmp_path / "scale.conf"
        conf.write_text(f'[kubernetes]\napi-servers = ["{sim.url}"]\ntoken = "{TOKEN}"\n'
                        f'ca-path = "{sim.ca_path}"\nresource = "pod"\n')
        started = time.monotonic()
        proc = subprocess.Popen([TRAWL, "discover", "-c", str(conf)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 40
            for _ in range(n):
                assert proc.stdout.readline(), "trawl discover ended early"
                assert time.monotonic() < deadline
            discovered_after = time.monotonic() - started
            rss_discovered = _rss_kib(proc.pid, "VmRSS")
            t0 = time.monotonic()
            for i in range(0, n, n // changed):
                pod = sim.get("pods", f"ns-{i % 20}", f"app-{i}")
                pod["metadata"]["labels"]["version"] = "v2"
                sim.modify("pods", pod)
            added = 0
            deadline = time.monotonic() + 40
            while added < changed:
                line = proc.stdout.readline()
                assert line
                assert time.monotonic() < deadline
                event = json.loads(line)
                if event.get("event") == "added":
                    assert event["labels"][P + "pod_label_version"] == "v2"
                    added += 1
            converged_after = time.monotonic() - t0
            peak = _rss_kib(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    with capsys.disabled():
        print(f"\nkubernetes scale: {n} pods discovered in {discovered_after:.2f} s "
              f"(trawl discover, from process start; RSS {rss_discovered / 1024:.0f} MiB); "
              f"{changed} modified pods converged in {converged_after:.2f} s; "
              f"peak RSS {peak / 1024:.0f} MiB")
