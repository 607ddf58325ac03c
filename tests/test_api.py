"""trawl's HTTP endpoints against a running host: shapes, auth, TLS, limits."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trawl
import trio
import trustme
from trawl.testing import ExpositionServer, make_registry

from tests.servers import free_port

BODY = b"# TYPE m gauge\nm 1\n"


def config(port: int, up: str, down: str, **http: Any) -> dict[str, Any]:
    return {
        "http": {"bind-address": f"127.0.0.1:{port}", **http},
        "static-discovery": [{"id": "s", "targets": [up, down, "127.0.0.1:9"],
                              "labels": {"team": "db"}}],
        "scraper": [{"name": "node", "db": "db", "rp": "rp", "scrape-interval": "1s",
                     "scrape-timeout": "500ms", "discoverer-service": "static-discovery",
                     "discoverer-id": "s", "blacklist": ["127.0.0.1:9"],
                     "sinks": ["mem"]}],
        "memory-sink": [{"name": "mem"}],
    }


@asynccontextmanager
async def running(cfg: dict[str, Any]) -> AsyncIterator[trawl.Host]:
    registry = make_registry()
    host = trawl.Host(trawl.parse_config(cfg, registry, "<test>"), registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(host.run, handle_signals=False))
        yield host
        nursery.cancel_scope.cancel()


@pytest.fixture
def up_target():
    with ExpositionServer(BODY) as server:
        yield server.address


def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


async def wait_scraped(host: trawl.Host, count: int = 2) -> None:
    with trio.fail_after(10):
        while sum(1 for p in host.pools for loop, _ in p.loops.values()
                  if loop.health.scrapes >= 1) < count:
            await trio.sleep(0.05)


async def test_targets_api_has_prometheus_shape(up_target):
    port, down = free_port(), closed_port()
    async with running(config(port, up_target, down)) as host:
        await wait_scraped(host)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            data = (await client.get("/api/v1/targets")).json()
            active_only = (await client.get("/api/v1/targets?state=active")).json()["data"]
            other_pool = (await client.get("/api/v1/targets?scrapePool=nope")).json()["data"]
            bad = await client.get("/api/v1/targets?state=bogus")
    assert data["status"] == "success"
    active = {t["scrapeUrl"]: t for t in data["data"]["activeTargets"]}
    up = active[f"http://{up_target}/metrics"]
    assert set(up) == {"discoveredLabels", "labels", "scrapePool", "scrapeUrl", "globalUrl",
                       "lastError", "lastScrape", "lastScrapeDuration", "health",
                       "scrapeInterval", "scrapeTimeout"}
    assert up["health"] == "up"
    assert up["lastError"] == ""
    assert up["labels"] == {"instance": up_target, "job": "node", "team": "db"}
    assert up["discoveredLabels"] == {
        "__address__": up_target, "__metrics_path__": "/metrics", "__scheme__": "http",
        "__scrape_interval__": "1s", "__scrape_timeout__": "500ms", "job": "node",
        "team": "db"}
    assert up["scrapePool"] == "node"
    assert (up["scrapeInterval"], up["scrapeTimeout"]) == ("1s", "500ms")
    assert up["lastScrape"].endswith("Z") and not up["lastScrape"].startswith("0001")
    down_t = active[f"http://{down}/metrics"]
    assert down_t["health"] == "down"
    assert down_t["lastError"].startswith("connection failed")
    (dropped,) = data["data"]["droppedTargets"]
    assert dropped["discoveredLabels"]["__address__"] == "127.0.0.1:9"
    assert set(active_only) == {"activeTargets"}
    assert other_pool == {"activeTargets": [], "droppedTargets": []}
    assert bad.status_code == 400
    assert bad.json()["status"] == "error"


async def test_metrics_health_and_ready(up_target):
    port = free_port()
    async with running(config(port, up_target, closed_port())) as host:
        await wait_scraped(host)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            metrics = (await client.get("/metrics")).text
            healthy = await client.get("/-/healthy")
            ready = await client.get("/-/ready")
            page = await client.get("/targets")
            missing = await client.get("/nope")
            post = await client.post("/metrics")
    for line in (f'trawl_target_scrapes_total{{scraper="node",instance="{up_target}"}}',
                 'trawl_discoverer_refreshes_total{discoverer="static-discovery/s"}',
                 'trawl_sink_points_written_total{sink="mem"}',
                 "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert line in metrics
    assert healthy.status_code == ready.status_code == page.status_code == 200
    assert "<title>trawl · targets</title>" in page.text
    assert missing.status_code == 404
    assert post.status_code == 405


def test_the_api_binds_to_loopback_by_default():
    assert trawl.HttpConfig().bind_address == "127.0.0.1:9273"


async def test_auth_guards_every_endpoint_but_healthy(up_target):
    port = free_port()
    cfg = config(port, up_target, closed_port(), **{
        "auth-enabled": True, "username": "admin", "password": "s3cret",
        "bearer-token": "tok-123"})
    async with running(cfg), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for path in ("/metrics", "/api/v1/targets", "/-/ready", "/targets"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, auth=("admin", "wrong"))).status_code == 401
            assert (await client.get(path, auth=("admin", "s3cret"))).status_code == 200
            ok = await client.get(path, headers={"Authorization": "Bearer tok-123"})
            assert ok.status_code == 200
        assert (await client.get("/-/healthy")).status_code == 200
        reload = await client.post("/-/reload")
        assert reload.status_code == 401
        assert reload.headers["WWW-Authenticate"] == 'Basic realm="trawl"'


def test_auth_without_credentials_is_a_config_error():
    with pytest.raises(trawl.ConfigError, match="auth-enabled needs"):
        trawl.parse_config({"http": {"auth-enabled": True}}, make_registry())


async def test_https(up_target, tmp_path: Path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    cfg = config(port, up_target, closed_port(), **{
        "https-enabled": True, "https-certificate": str(tmp_path / "cert.pem"),
        "https-private-key": str(tmp_path / "key.pem")})
    async with running(cfg):
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        async with httpx.AsyncClient(verify=ctx) as client:
            assert (await client.get(f"https://127.0.0.1:{port}/-/ready")).status_code == 200
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/-/ready")


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_requests_are_bounded(up_target):
    port = free_port()
    async with running(config(port, up_target, closed_port())):
        head = await trio.to_thread.run_sync(raw_request, port, b"GET /metrics HTTP/1.1\r\n"
                                             + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n")
        body = await trio.to_thread.run_sync(raw_request, port,
                                             b"POST /-/reload HTTP/1.1\r\nContent-Length: "
                                             + str(10**7).encode() + b"\r\n\r\n")
        query = await trio.to_thread.run_sync(
            raw_request, port, b"GET /api/v1/targets?" + b"&".join(
                b"a%d=1" % i for i in range(500)) + b" HTTP/1.1\r\n\r\n")
        long_param = await trio.to_thread.run_sync(
            raw_request, port, b"GET /api/v1/targets?state=" + b"x" * 5000 + b" HTTP/1.1\r\n\r\n")
        garbage = await trio.to_thread.run_sync(raw_request, port, b"\x16\x03\x01garbage\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert body.startswith(b"HTTP/1.1 413 ")
    assert query.startswith(b"HTTP/1.1 400 ") or query.startswith(b"HTTP/1.1 414 ")
    assert long_param.startswith(b"HTTP/1.1 414 ")
    assert garbage.startswith(b"HTTP/1.1 400 ")
