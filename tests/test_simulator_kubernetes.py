"""The Kubernetes API-server simulator speaks the API as a real server does."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.simulators import kubernetes as k8s

TOKEN = "s3cr3t"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[k8s.KubernetesSimulator]:
    with k8s.KubernetesSimulator(tmp_path, bookmark_interval=0.2) as s:
        k8s.populate(s)
        yield s


@pytest.fixture
def client(sim: k8s.KubernetesSimulator) -> Iterator[httpx.Client]:
    ctx = ssl.create_default_context(cafile=str(sim.ca_path))
    with httpx.Client(base_url=sim.url, verify=ctx, timeout=10,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def names(body: dict[str, Any]) -> set[str]:
    return {o["metadata"]["name"] for o in body["items"]}


def test_lists_with_resource_version_namespaces_and_selectors(
        sim: k8s.KubernetesSimulator, client: httpx.Client) -> None:
    body = client.get("/api/v1/pods").json()
    assert body["kind"] == "PodList"
    assert body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(sim.rv)
    assert len(body["items"]) == 7
    assert names(client.get("/api/v1/namespaces/jobs/pods").json()) == {"batch-x"}
    assert names(client.get("/api/v1/pods", params={
        "labelSelector": "app.kubernetes.io/name=web,tier in (front, back)"}).json()) == {
        "web-7d9f-0", "web-7d9f-1", "web-7d9f-2"}
    assert names(client.get("/api/v1/pods", params={"labelSelector": "!app,component"}).json()
                 ) == {"static-pod"}
    assert names(client.get("/api/v1/pods", params={
        "fieldSelector": "spec.nodeName=node-b"}).json()) == {"web-7d9f-1", "db-0"}
    assert client.get("/apis/discovery.k8s.io/v1/endpointslices").json()["kind"] == (
        "EndpointSliceList")
    ingresses = client.get("/apis/networking.k8s.io/v1/namespaces/prod/ingresses").json()
    assert names(ingresses) == {"web"}
    assert client.get("/api/v1/nodes").json()["items"][0]["status"]["daemonEndpoints"] == {
        "kubeletEndpoint": {"Port": 10250}}
    for ip in [o["status"].get("podIP", "127.0.0.1") for o in
               client.get("/api/v1/pods").json()["items"]]:
        assert ip.startswith("127.")


def test_lists_in_pages_of_one_snapshot(sim: k8s.KubernetesSimulator,
                                        client: httpx.Client) -> None:
    first = client.get("/api/v1/pods", params={"limit": "3"}).json()
    assert len(first["items"]) == 3
    assert first["metadata"]["remainingItemCount"] == 4
    sim.add("pods", k8s.pod("after", "prod", "127.1.0.70"))  # not in this snapshot
    rest = client.get("/api/v1/pods", params={"limit": "10",
                                              "continue": first["metadata"]["continue"]}).json()
    assert "continue" not in rest["metadata"]
    assert rest["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert len(names(first) | names(rest)) == 7
    assert "after" not in names(rest)
    again = client.get("/api/v1/pods", params={"limit": "1"}).json()
    sim.compact()
    expired = client.get("/api/v1/pods", params={"continue": again["metadata"]["continue"]})
    assert expired.status_code == 410
    assert expired.json()["reason"] == "Expired"


def test_errors_are_status_objects(sim: k8s.KubernetesSimulator, client: httpx.Client) -> None:
    anonymous = client.get("/api/v1/pods", headers={"Authorization": "Bearer nope"})
    assert anonymous.status_code == 401
    assert anonymous.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "message": "Unauthorized",
                                "reason": "Unauthorized", "code": 401}
    assert client.get("/api/v1/deployments").status_code == 404
    assert client.get("/api/v1/namespaces/x/nodes").status_code == 404
    assert client.get("/apis/discovery.k8s.io/v1/pods").status_code == 404
    bad = client.get("/api/v1/pods", params={"labelSelector": "a=(b"})
    assert bad.status_code == 400
    assert bad.json()["reason"] == "BadRequest"
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url + "/api/v1/pods", timeout=5)  # the system CAs do not trust it


def read_events(client: httpx.Client, path: str, params: dict[str, str], count: int,
                changes: Any = None) -> list[dict[str, Any]]:
    """Open a watch, run ``changes`` in a thread, return the first ``count`` events."""
    events: list[dict[str, Any]] = []
    with client.stream("GET", path, params={"watch": "1", **params}) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        if changes is not None:
            threading.Timer(0.1, changes).start()
        for line in response.iter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) == count:
                break
    return events


def test_watch_streams_changes_with_selector_transitions(
        sim: k8s.KubernetesSimulator, client: httpx.Client) -> None:
    rv = client.get("/api/v1/namespaces/prod/pods").json()["metadata"]["resourceVersion"]

    def changes() -> None:
        sim.add("pods", k8s.pod("w-1", "prod", "127.1.0.60", labels={"sel": "yes"}))
        sim.add("pods", k8s.pod("other-ns", "jobs", "127.1.1.60", labels={"sel": "yes"}))
        p = sim.get("pods", "prod", "w-1")
        p["metadata"]["labels"]["extra"] = "1"
        sim.modify("pods", p)
        p["metadata"]["labels"]["sel"] = "no"  # leaves the selection: DELETED
        sim.modify("pods", p)
        p["metadata"]["labels"]["sel"] = "yes"  # comes back: ADDED
        sim.modify("pods", p)
        sim.delete("pods", "prod", "w-1")

    events = read_events(client, "/api/v1/namespaces/prod/pods",
                         {"resourceVersion": rv, "labelSelector": "sel=yes"}, 5, changes)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED", "ADDED", "DELETED"]
    assert {e["object"]["metadata"]["name"] for e in events} == {"w-1"}
    assert events[0]["object"]["kind"] == "Pod"
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > int(rv)


def test_watch_bookmarks_timeout_and_resume(sim: k8s.KubernetesSimulator,
                                            client: httpx.Client) -> None:
    rv = client.get("/api/v1/nodes").json()["metadata"]["resourceVersion"]
    started = time.monotonic()
    with client.stream("GET", "/api/v1/nodes", params={
            "watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
            "timeoutSeconds": "1"}) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert 0.9 < time.monotonic() - started < 5  # ended by timeoutSeconds
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"] == {"kind": "Node", "apiVersion": "v1",
                                   "metadata": {"resourceVersion": rv}}
    # resuming from an old version replays what happened since
    sim.add("nodes", k8s.node("node-z", "127.0.10.26"))
    replay = read_events(client, "/api/v1/nodes", {"resourceVersion": rv}, 1)
    assert replay[0]["type"] == "ADDED"
    assert replay[0]["object"]["metadata"]["name"] == "node-z"


def test_too_old_resource_version_is_gone(sim: k8s.KubernetesSimulator,
                                          client: httpx.Client) -> None:
    rv = client.get("/api/v1/services").json()["metadata"]["resourceVersion"]
    sim.delete("services", "jobs", "upstream")
    sim.compact()
    gone = client.get("/api/v1/services", params={"watch": "1", "resourceVersion": rv})
    assert gone.status_code == 410
    assert gone.json()["code"] == 410
    assert gone.json()["reason"] == "Expired"
    sim.gone_as_event = True
    events = read_events(client, "/api/v1/services", {"resourceVersion": rv}, 1)
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410
    assert sim.gone_events == 1


def test_outage_answers_503_and_cuts_watches(sim: k8s.KubernetesSimulator,
                                             client: httpx.Client) -> None:
    rv = client.get("/api/v1/pods").json()["metadata"]["resourceVersion"]
    def follow() -> None:
        with client.stream("GET", "/api/v1/pods",
                           params={"watch": "1", "resourceVersion": rv}) as response:
            threading.Timer(0.1, sim.set_outage, (True,)).start()
            for _ in response.iter_lines():
                pass

    with pytest.raises(httpx.RemoteProtocolError):  # cut without the final chunk
        follow()
    assert client.get("/api/v1/pods").status_code == 503
    sim.set_outage(False)
    assert client.get("/api/v1/pods").status_code == 200
