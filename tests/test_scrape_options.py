"""Every ``[[scraper]]`` option, end to end against real HTTP(S) servers on loopback."""

from __future__ import annotations

import gzip
import http.server
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trawl
import trustme
from trawl._scrape import ScrapeLoop, ScrapePool, build_target, http_client
from trawl.testing import make_registry

BODY = b'# TYPE a counter\na_total{x="1"} 3\nb 2.5\n'


class Target:
    """A threaded HTTP(S) server that records each request's path and headers."""

    def __init__(self, *, body: bytes = BODY, status: int = 200, delay: float = 0.0,
                 tls: ssl.SSLContext | None = None, gzip_body: bool = False,
                 content_type: str = "text/plain; version=0.0.4",
                 proxy: bool = False) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.requests.append((self.path, dict(self.headers.items())))
                if delay:
                    time.sleep(delay)
                payload = gzip.compress(body) if gzip_body else body
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                if gzip_body:
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def targets():
    made: list[Target] = []

    def make(**kwargs: Any) -> Target:
        made.append(Target(**kwargs))
        return made[-1]

    yield make
    for t in made:
        t.close()


def scraper(**keys: Any) -> trawl.ScraperConfig:
    base = {"name": "job", "db": "db", "rp": "rp", "discoverer-service": "static-discovery",
            "discoverer-id": "s", "scrape-interval": "5s", "scrape-timeout": "2s"}
    return trawl.ScraperConfig.model_validate({**base, **keys})


async def scrape(address: str, config: trawl.ScraperConfig, labels: dict[str, str] | None = None
                 ) -> tuple[ScrapeLoop, list[trawl.Point]]:
    """One real scrape through the production loop; returns the loop and its points."""
    delivered: list[trawl.Batch] = []
    pool = ScrapePool(config, make_registry(), delivered.append)
    target, why = build_target({"__address__": address, **(labels or {})}, config)
    assert target is not None, why
    loop = ScrapeLoop(target, config, pool)
    async with http_client(config) as client:
        await loop.scrape_once(client)
    (batch,) = delivered
    return loop, batch.points


def values(points: list[trawl.Point]) -> dict[str, float]:
    return {s.prefix.split(" ")[0]: v for s, v, _ in points}


async def test_plain_scrape_without_authorization_header(targets):
    t = targets()
    loop, points = await scrape(t.address, scraper())
    assert loop.health.health == "up"
    (path, headers), = t.requests
    assert path == "/metrics"
    assert "Authorization" not in headers  # Kapacitor would send "Basic Og=="
    assert headers["Accept-Encoding"] == "gzip"
    assert headers["X-Prometheus-Scrape-Timeout-Seconds"] == "2"
    assert "text/plain;version=0.0.4" in headers["Accept"]
    got = values(points)
    assert got[f"a_total,instance={t.address},job=job,x=1"] == 3.0
    assert got[f"up,instance={t.address},job=job"] == 1.0
    assert got[f"scrape_samples_scraped,instance={t.address},job=job"] == 2.0
    assert got[f"scrape_series_added,instance={t.address},job=job"] == 2.0


async def test_basic_auth(targets):
    t = targets()
    await scrape(t.address, scraper(username="admin", password="s3cret"))
    assert t.requests[0][1]["Authorization"] == "Basic YWRtaW46czNjcmV0"


async def test_bearer_token_and_bearer_token_file(targets, tmp_path):
    t = targets()
    await scrape(t.address, scraper(**{"bearer-token": "tok1"}))
    token_file = tmp_path / "token"
    token_file.write_text("tok2\n")
    config = scraper(**{"bearer-token-file": str(token_file)})
    delivered: list[trawl.Batch] = []
    target, _ = build_target({"__address__": t.address}, config)
    assert target is not None
    loop = ScrapeLoop(target, config, ScrapePool(config, make_registry(), delivered.append))
    async with http_client(config) as client:
        await loop.scrape_once(client)
        token_file.write_text("tok3-rotated")
        await loop.scrape_once(client)
    assert [h["Authorization"] for _, h in t.requests] == [
        "Bearer tok1", "Bearer tok2", "Bearer tok3-rotated"]


async def test_params_and_metrics_path(targets):
    t = targets()
    await scrape(t.address, scraper(**{"metrics-path": "/probe",
                                       "params": {"module": ["http_2xx"], "target": "x y"}}))
    assert t.requests[0][0] == "/probe?module=http_2xx&target=x+y"


async def test_gzip_response(targets):
    t = targets(gzip_body=True)
    loop, points = await scrape(t.address, scraper())
    assert loop.health.health == "up"
    assert values(points)[f"b,instance={t.address},job=job"] == 2.5


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, *, require_client_cert: bool = False, name: str = "127.0.0.1"
               ) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(ctx)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def test_https_with_ssl_ca(targets, ca, tmp_path):
    t = targets(tls=server_tls(ca))
    loop, _ = await scrape(t.address, scraper(scheme="https", **{"ssl-ca": ca_file(ca, tmp_path)}))
    assert loop.health.health == "up", loop.health.last_error
    assert loop.target.url == f"https://{t.address}/metrics"


async def test_https_untrusted_fails_with_a_tls_error(targets, ca):
    t = targets(tls=server_tls(ca))
    loop, points = await scrape(t.address, scraper(scheme="https"))
    assert loop.health.health == "down"
    assert "CERTIFICATE_VERIFY_FAILED" in loop.health.last_error
    assert values(points) == {
        f"{name},instance={t.address},job=job": v for name, v in [
            ("up", 0.0), ("scrape_duration_seconds", values(points)[
                f"scrape_duration_seconds,instance={t.address},job=job"]),
            ("scrape_samples_scraped", 0.0), ("scrape_samples_post_metric_relabeling", 0.0),
            ("scrape_series_added", 0.0)]}


async def test_insecure_skip_verify(targets, ca):
    t = targets(tls=server_tls(ca))
    loop, _ = await scrape(t.address, scraper(scheme="https", **{"insecure-skip-verify": True}))
    assert loop.health.health == "up", loop.health.last_error


async def test_client_certificate(targets, ca, tmp_path):
    t = targets(tls=server_tls(ca, require_client_cert=True))
    cert = ca.issue_cert("trawl-client")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    without, _ = await scrape(t.address, scraper(scheme="https",
                                                 **{"ssl-ca": ca_file(ca, tmp_path)}))
    assert without.health.health == "down"
    loop, _ = await scrape(t.address, scraper(scheme="https", **{
        "ssl-ca": ca_file(ca, tmp_path), "ssl-cert": str(tmp_path / "client.pem"),
        "ssl-key": str(tmp_path / "client.key")}))
    assert loop.health.health == "up", loop.health.last_error


async def test_ssl_server_name(targets, ca, tmp_path):
    t = targets(tls=server_tls(ca, name="metrics.example"))
    wrong, _ = await scrape(t.address, scraper(scheme="https",
                                               **{"ssl-ca": ca_file(ca, tmp_path)}))
    assert wrong.health.health == "down"
    loop, _ = await scrape(t.address, scraper(scheme="https", **{
        "ssl-ca": ca_file(ca, tmp_path), "ssl-server-name": "metrics.example"}))
    assert loop.health.health == "up", loop.health.last_error


async def test_proxy_url(targets):
    """The proxy (a plain HTTP server here) receives the absolute-form request."""
    proxy = targets()
    await scrape("127.0.0.1:1", scraper(**{"proxy-url": f"http://{proxy.address}"}))
    assert proxy.requests[0][0] == "http://127.0.0.1:1/metrics"


async def test_scrape_timeout(targets):
    t = targets(delay=1.5)
    loop, points = await scrape(t.address, scraper(**{"scrape-timeout": "500ms"}))
    assert loop.health.health == "down"
    assert loop.health.last_error == "scrape timed out after 500ms"
    assert loop.health.last_error_time is not None
    assert values(points)[f"up,instance={t.address},job=job"] == 0.0


async def test_blacklist(targets):
    config = scraper(blacklist=["127.0.0.1:9100"])
    assert build_target({"__address__": "127.0.0.1:9100"}, config) == (None, "blacklisted")
    assert build_target({"__address__": "127.0.0.1:9101"}, config)[0] is not None


@pytest.mark.parametrize(("status", "error"), [
    (401, "server returned HTTP status 401 Unauthorized"),
    (404, "server returned HTTP status 404 Not Found"),
    (503, "server returned HTTP status 503 Service Unavailable"),
])
async def test_http_errors_mark_the_target_down(targets, status, error):
    t = targets(status=status)
    loop, points = await scrape(t.address, scraper())
    assert loop.health.last_error == error
    assert len(points) == 5


async def test_connection_refused():
    loop, _ = await scrape("127.0.0.1:1", scraper())
    assert loop.health.health == "down"
    assert loop.health.last_error.startswith("connection failed")


async def test_parse_error_writes_no_partial_samples(targets):
    t = targets(body=b"good 1\nbad{ 2\n")
    loop, points = await scrape(t.address, scraper())
    assert loop.health.health == "down"
    assert [s.measurement for s, _, _ in points] == [
        "up", "scrape_duration_seconds", "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling", "scrape_series_added"]


@pytest.mark.parametrize(("keys", "error"), [
    ({"body-size-limit": "20B"}, "body size limit exceeded"),
    ({"sample-limit": 1}, "sample limit exceeded"),
    ({"label-limit": 3}, "label_limit exceeded (metric: a_total, number of labels: 4, limit: 3)"),
    ({"label-name-length-limit": 3}, "label_name_length_limit exceeded (metric: a_total, label "
     "name: instance, length: 8, limit: 3)"),
    ({"label-value-length-limit": 5}, "label_value_length_limit exceeded"),
])
async def test_limits_fail_the_scrape(targets, keys, error):
    t = targets()
    loop, points = await scrape(t.address, scraper(**keys))
    assert loop.health.health == "down"
    assert loop.health.last_error.startswith(error)
    assert len(points) == 5


async def test_body_size_limit_applies_after_gunzip(targets):
    t = targets(body=b"x 1\n" * 1000, gzip_body=True)
    loop, _ = await scrape(t.address, scraper(**{"body-size-limit": "1KB"}))
    assert loop.health.last_error.startswith("body size limit exceeded")


async def test_honor_labels_and_timestamps(targets):
    body = b'm{job="scraped",instance=""} 1 1000\n'
    t = targets(body=body)
    _, points = await scrape(t.address, scraper())
    series, _, ts = points[0]
    assert series.tags == {"job": "job", "exported_job": "scraped", "instance": t.address}
    assert ts == 1000
    _, points = await scrape(t.address, scraper(**{"honor-labels": True,
                                                   "honor-timestamps": False}))
    series, _, ts = points[0]
    assert series.tags == {"job": "scraped", "instance": t.address}
    assert ts > 1_700_000_000_000


async def test_target_labels_and_nan_samples(targets):
    t = targets(body=b"a NaN\nb +Inf\nc 1\n")
    _, points = await scrape(t.address, scraper(), {"team": "db", "__meta_x": "hidden"})
    got = values(points)
    assert got[f"c,instance={t.address},job=job,team=db"] == 1.0
    assert not any(k.startswith(("a,", "b,")) for k in got)
    assert got[f"scrape_samples_scraped,instance={t.address},job=job,team=db"] == 3.0
    assert got[f"scrape_samples_post_metric_relabeling,instance={t.address},job=job,team=db"] == 1.0


async def test_a_buggy_processor_downs_its_target_only(targets):
    class Broken(trawl.Processor):
        kind = "broken"

        def process(self, points):
            raise ZeroDivisionError("bug")

    t = targets()
    config = scraper()
    delivered: list[trawl.Batch] = []
    pool = ScrapePool(config, make_registry(), delivered.append,
                      processors=[Broken(trawl.ProcessorConfig(kind="broken"))])
    target, _ = build_target({"__address__": t.address}, config)
    assert target is not None
    loop = ScrapeLoop(target, config, pool)
    async with http_client(config) as client:
        await loop.scrape_once(client)
    assert loop.health.health == "down"
    assert loop.health.last_error == ("internal error in a parser or processor: "
                                      "ZeroDivisionError('bug')")
    assert delivered[0].points[0][0].measurement == "up"


def test_scrape_defaults_are_written_as_prometheus_writes_them():
    """Relabel rules on ``__scrape_interval__`` see what they would see in Prometheus."""
    from trawl._scrape import with_scrape_defaults

    labels = with_scrape_defaults({"__address__": "a:1", "__param_module": "x"},
                                  scraper(**{"scrape-interval": "1m0s", "scrape-timeout": "1m",
                                             "params": {"module": ["http_2xx"]}}))
    assert labels == {"__address__": "a:1", "job": "job", "__scheme__": "http",
                      "__metrics_path__": "/metrics", "__scrape_interval__": "1m",
                      "__scrape_timeout__": "1m", "__param_module": "http_2xx"}
