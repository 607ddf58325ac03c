"""The Consul API simulator speaks Consul's HTTP API: paths, shapes, blocking queries, ACLs.

Its fidelity to what real clients expect is shown by vmagent 1.79 discovering through it
(``plugins/discovery/consul/tests``); these tests pin the protocol details themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme

from tests.simulators.consul import ConsulSimulator, parse_go_duration


@pytest.fixture
def sim() -> Iterator[ConsulSimulator]:
    with ConsulSimulator() as s:
        s.add_node("n1", "127.0.0.2", meta={"rack": "r1"})
        s.add_node("n2", "127.0.0.3", meta={"rack": "r2"})
        s.register("web", node="n1", port=80, id="web-1", tags=["a", "b"], meta={"v": "1"})
        s.register("web", node="n2", port=81, id="web-2", tags=["b"], status="critical")
        yield s


def get(sim: ConsulSimulator, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(sim.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


def test_go_durations() -> None:
    assert parse_go_duration("120000ms") == 120.0
    assert parse_go_duration("1m30s") == 90.0
    with pytest.raises(ValueError):
        parse_go_duration("10")


def test_shapes_of_services_health_and_catalog(sim: ConsulSimulator) -> None:
    services = get(sim, "/v1/catalog/services")
    assert services.json() == {"consul": [], "web": ["a", "b"]}
    assert int(services.headers["X-Consul-Index"]) == sim.index
    assert services.headers["Content-Type"] == "application/json"

    [entry, _] = get(sim, "/v1/health/service/web").json()
    assert set(entry) == {"Node", "Service", "Checks"}
    assert entry["Node"]["Node"] == "n1"
    assert entry["Node"]["Address"] == "127.0.0.2"
    assert entry["Node"]["Datacenter"] == "dc1"
    assert entry["Node"]["Meta"] == {"rack": "r1"}
    assert entry["Node"]["TaggedAddresses"]["lan"] == "127.0.0.2"
    assert entry["Service"]["ID"] == "web-1"
    assert entry["Service"]["Port"] == 80
    assert entry["Service"]["Tags"] == ["a", "b"]
    assert entry["Service"]["Namespace"] == "default"
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth", "service:web-1"]

    [catalog, _] = get(sim, "/v1/catalog/service/web").json()
    assert catalog["ServiceID"] == "web-1"
    assert catalog["ServiceName"] == "web"
    assert catalog["NodeMeta"] == {"rack": "r1"}
    assert catalog["ServicePort"] == 80
    assert catalog["ServiceMeta"] == {"v": "1"}

    agent = get(sim, "/v1/agent/self").json()
    assert agent["Config"]["Datacenter"] == "dc1"


def test_filters(sim: ConsulSimulator) -> None:
    def ids(query: str) -> list[str]:
        return [e["Service"]["ID"] for e in get(sim, "/v1/health/service/web?" + query).json()]

    assert ids("tag=a") == ["web-1"]
    assert ids("tag=b") == ["web-1", "web-2"]
    assert ids("tag=a&tag=c") == []
    assert ids("node-meta=rack:r2") == ["web-2"]
    assert ids("passing") == ["web-1"]
    assert ids("passing=false") == ["web-1", "web-2"]
    assert ids("ns=other") == []
    assert ids("ns=*&partition=default") == ["web-1", "web-2"]
    assert get(sim, "/v1/catalog/services?node-meta=rack:r2").json() == {"web": ["b"]}


def test_errors(sim: ConsulSimulator) -> None:
    assert get(sim, "/v1/health/service/web?dc=dc2").status_code == 500
    assert get(sim, "/v1/health/service/web?dc=dc2").text == "No path to datacenter"
    assert get(sim, "/v1/health/service/web?index=x").status_code == 400
    assert get(sim, "/v1/health/service/web?index=1&wait=10").text == "Invalid wait time"
    assert get(sim, "/v1/health/service/web?stale&consistent").status_code == 400
    assert get(sim, "/v1/kv/x").status_code == 404
    sim.fail_with(500)
    assert get(sim, "/v1/catalog/services").status_code == 500
    sim.fail_with(None)
    assert get(sim, "/v1/catalog/services").status_code == 200


def test_blocking_query_waits_for_a_change(sim: ConsulSimulator) -> None:
    index = int(get(sim, "/v1/health/service/web").headers["X-Consul-Index"])
    # Nothing changes: the query waits for ``wait``, then answers with the same index.
    began = time.monotonic()
    same = get(sim, f"/v1/health/service/web?index={index}&wait=300ms")
    assert time.monotonic() - began >= 0.3
    assert int(same.headers["X-Consul-Index"]) == index
    # A change of another service does not wake it; a change of this one does at once.
    timer = threading.Timer(0.2, lambda: (
        sim.register("db", node="n1", port=5432, id="db-1"),
        sim.update("web-1", port=8080)))
    timer.start()
    began = time.monotonic()
    changed = get(sim, f"/v1/health/service/web?index={index}&wait=20s")
    took = time.monotonic() - began
    timer.join()
    assert took < 10
    assert int(changed.headers["X-Consul-Index"]) == sim.index > index
    assert changed.json()[0]["Service"]["Port"] == 8080
    services = get(sim, f"/v1/catalog/services?index={index}&wait=20s")
    assert "db" in services.json()


def test_acl_tokens() -> None:
    with ConsulSimulator(token="root-secret") as sim:
        assert get(sim, "/v1/catalog/services",
                   headers={"X-Consul-Token": "root-secret"}).json() == {"consul": []}
        assert get(sim, "/v1/catalog/services",
                   headers={"Authorization": "Bearer root-secret"}).status_code == 200
        assert get(sim, "/v1/catalog/services?token=root-secret").status_code == 200
        wrong = get(sim, "/v1/catalog/services", headers={"X-Consul-Token": "nope"})
        assert (wrong.status_code, wrong.text) == (403, "ACL not found")
        anonymous = get(sim, "/v1/catalog/services")
        assert anonymous.json() == {}
        assert anonymous.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        assert get(sim, "/v1/agent/self").status_code == 403


def test_tls_and_client_certificates() -> None:
    ca = trustme.CA()
    client = ca.issue_cert("client")
    with ConsulSimulator(tls=ca, verify_incoming=True) as sim:
        assert sim.url.startswith("https://127.0.0.1:")
        with client.cert_chain_pems[0].tempfile() as cert, \
                client.private_key_pem.tempfile() as key, ca.cert_pem.tempfile() as cafile:
            import ssl

            ctx = ssl.create_default_context(cafile=cafile)
            ctx.load_cert_chain(cert, key)
            assert httpx.get(sim.url + "/v1/catalog/services", verify=ctx).status_code == 200
            bare = ssl.create_default_context(cafile=cafile)
            with pytest.raises(httpx.HTTPError):
                httpx.get(sim.url + "/v1/catalog/services", verify=bare)


def test_only_loopback_addresses() -> None:
    with ConsulSimulator() as sim:
        with pytest.raises(ValueError, match="loopback"):
            sim.add_node("bad", "10.0.0.1")
        with pytest.raises(ValueError, match="loopback"):
            sim.register("x", port=1, address="192.168.1.1")
