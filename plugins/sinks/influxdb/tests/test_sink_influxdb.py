"""The InfluxDB sink against real servers: InfluxDB 1.6.7 (api = "v1", with and without
authentication) and VictoriaMetrics 1.79.5 (api = "v2", its ``/api/v2/write``)."""

from __future__ import annotations

import itertools
import math
import subprocess
import time
from pathlib import Path

import pytest
import trawl
import trio
from pydantic import ValidationError
from trawl import Batch, Series, get_plugin_manager, list_plugins
from trawl_sink_influxdb import InfluxDBConfig, InfluxDBSink
from trawl_sink_influxdb._sink import classify, rejected_lines, retry_after

from tests.servers import free_port
from tests.servers.influxdb import (
    ExpositionTargets,
    InfluxDB,
    Samples,
    TrawlProcess,
    parse_line_protocol,
    reference_config,
    trawl_binary,
)
from tests.servers.victoriametrics import VictoriaMetrics

KAPACITOR_CONF = Path(__file__).resolve().parents[4] / "tests" / "data" / "kapacitor.conf"


def test_plugin_is_registered():
    kinds = {k for p in list_plugins(get_plugin_manager()) for k in p["kinds"]}
    assert "influxdb" in kinds


# ---------------------------------------------------------------- configuration
def test_kapacitor_conf_loads():
    if not KAPACITOR_CONF.exists():
        pytest.fail(f"{KAPACITOR_CONF} is missing")
    out = subprocess.run([trawl_binary(), "check", str(KAPACITOR_CONF)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{KAPACITOR_CONF}: OK:" in out.stdout
    assert "1 sink(s) enabled" in out.stdout


def test_kapacitor_keys_are_accepted_and_defaults_hold():
    cfg = InfluxDBConfig.model_validate({
        "name": "localhost", "urls": ["http://localhost:8086/"], "timeout": 0,
        "startup-timeout": "5m", "disable-subscriptions": False,
        "subscription-mode": "server", "subscription-protocol": "udp",
        "subscriptions-sync-interval": "1m0s", "kapacitor-hostname": "", "http-port": 0,
        "udp-bind": "", "udp-buffer": 1000, "udp-read-buffer": 0,
        "subscriptions": {"db": ["autogen"]}, "excluded-subscriptions": {"_kapacitor": []},
    })
    assert cfg.urls == ["http://localhost:8086"]
    assert cfg.request_timeout == 10.0
    assert cfg.api == "v1"
    assert cfg.batch_size == 5000
    assert cfg.gzip is True
    assert cfg.spool_max_size == 512 << 20


@pytest.mark.parametrize(("entry", "message"), [
    ({"urls": []}, "at least one URL"),
    ({"urls": ["localhost:8086"]}, "not an http"),
    ({"urls": ["http://u:p@localhost:8086"]}, "credentials"),
    ({"name": "a b"}, "only letters"),
    ({"api": "v3"}, "'v1' or 'v2'"),
    ({"ssl-cert": "/c.pem"}, "together"),
    ({"ssl-ca": "/nonexistent/ca.pem"}, "ssl-ca '/nonexistent/ca.pem': no such file"),
    ({"token": "t", "username": "u"}, "not both"),
    ({"spool-max-size": "lots"}, "invalid size"),
    ({"batch-size": 0}, "greater than or equal to 1"),
    ({"retention": "1d"}, "Extra inputs"),
])
def test_bad_configuration_is_a_clear_error(entry, message):
    with pytest.raises(ValidationError, match=message):
        InfluxDBConfig.model_validate(entry)


def test_a_typo_names_file_section_and_key(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[[influxdb]]\n  name = "x"\n  batchsize = 5\n')
    out = subprocess.run([trawl_binary(), "check", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f'{path}: [[influxdb]] #1 (name = "x"): unknown key "batchsize"' in out.stdout


def test_secrets_stay_secret():
    cfg = InfluxDBConfig.model_validate({"password": "hunter2", "username": "u"})
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in str(trawl._model.dump_public(cfg))
    cfg2 = InfluxDBConfig.model_validate({"token": "tok-123"})
    assert "tok-123" not in repr(cfg2)


@pytest.mark.parametrize(("value", "size"), [
    (0, 0), (1024, 1024), ("512MB", 512 << 20), ("1GiB", 1 << 30), ("64k", 65536),
    ("1.5 KB", 1536), ("100", 100),
])
def test_sizes(value, size):
    assert trawl.parse_byte_size(value) == size


def test_error_answers_are_classified():
    e = classify(503, "overloaded", {"Retry-After": "7"}, "http://x", 10)
    assert e.retryable
    assert e.retry_after == 7.0
    assert classify(429, "", {}, "http://x", 10).retryable
    assert classify(401, "bad", {}, "http://x", 10).retryable
    assert "create-database" in str(classify(404, 'database not found: "d"', {}, "u", 1))
    whole = classify(400, "unable to parse 'x': bad", {}, "http://x", 10)
    assert not whole.retryable
    assert whole.rejected is None
    part = classify(400, "partial write: field type conflict: ... dropped=3", {}, "u", 10)
    assert part.rejected == 3
    v2 = classify(422, "failure writing points to database: partial write: dropped=2",
                  {}, "u", 10)
    assert v2.rejected == 2
    assert rejected_lines("partial write: unable to parse 'a'\nunable to parse 'b'", 9) == 2
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# ---------------------------------------------------------------- real servers
@pytest.fixture(scope="module")
def influxdb(tmp_path_factory):
    with InfluxDB(tmp_path_factory.mktemp("influxdb")) as server:
        yield server


@pytest.fixture(scope="module")
def influxdb_auth(tmp_path_factory):
    with InfluxDB(tmp_path_factory.mktemp("influxdb-auth"), auth=True) as server:
        server.create_admin()
        yield server


@pytest.fixture(scope="module")
def victoriametrics(tmp_path_factory):
    with VictoriaMetrics(tmp_path_factory.mktemp("vm")) as server:
        yield server


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    with ExpositionTargets(tmp_path_factory.mktemp("targets"), 3) as t:
        yield t


def sink_config(tmp_path: Path, **kw: object) -> InfluxDBConfig:
    return InfluxDBConfig.model_validate({"name": "influx", "spool-dir": str(tmp_path), **kw})


def batch(db: str, n: int = 5, name: str = "m", rp: str = "") -> Batch:
    now = int(time.time() * 1000)
    return Batch(db, rp, [(Series(name, {"i": str(i), "sp": "a b"}), i + 0.5, now - i)
                          for i in range(n)])


async def test_v1_writes_and_creates_the_database(influxdb, tmp_path):
    sink = InfluxDBSink(sink_config(tmp_path, urls=[influxdb.url], **{"create-database": True}))
    await sink.open()
    b = batch("created_db")
    await sink.write(b)
    await sink.close()
    got = await trio.to_thread.run_sync(influxdb.samples, "created_db")
    assert sum(len(v) for v in got.values()) == 5
    assert got[("m", (("i", "3"), ("sp", "a b")))] == {b.points[3][2]: 3.5}


async def test_v1_without_create_database_retries(influxdb, tmp_path):
    sink = InfluxDBSink(sink_config(tmp_path, urls=[influxdb.url]))
    await sink.open()
    with pytest.raises(trawl.SinkError, match=r"database not found.*create-database") as info:
        await sink.write(batch("never_created"))
    assert info.value.retryable
    await sink.close()


async def test_v1_uses_the_first_reachable_url(influxdb, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    sink = InfluxDBSink(sink_config(tmp_path, urls=[dead, influxdb.url]))
    await sink.open()
    assert sink.url == influxdb.url
    await sink.close()
    nothing = InfluxDBSink(sink_config(tmp_path, urls=[dead]))
    with pytest.raises(trawl.SinkError, match="no URL reachable") as info:
        await nothing.open()
    assert info.value.retryable
    await nothing.close()


async def test_v1_partial_write_reports_the_rejected_lines(influxdb, tmp_path):
    await trio.to_thread.run_sync(influxdb.query, "CREATE DATABASE conflict")
    now = int(time.time() * 1000)
    assert await trio.to_thread.run_sync(influxdb.write, "conflict", f"bad value=1i {now}") == 204
    sink = InfluxDBSink(sink_config(tmp_path, urls=[influxdb.url]))
    await sink.open()
    b = batch("conflict", n=4)
    b.points.extend(batch("conflict", n=2, name="bad").points)
    with pytest.raises(trawl.SinkError, match="field type conflict") as info:
        await sink.write(b)
    assert info.value.rejected == 2
    await sink.close()
    got = await trio.to_thread.run_sync(influxdb.samples, "conflict")
    assert sum(len(v) for k, v in got.items() if k[0] == "m") == 4


async def test_v1_authentication(influxdb_auth, tmp_path):
    await trio.to_thread.run_sync(influxdb_auth.query, "CREATE DATABASE authdb")
    wrong = InfluxDBSink(sink_config(tmp_path, urls=[influxdb_auth.url], username="admin",
                                     password="not-the-password"))
    await wrong.open()
    with pytest.raises(trawl.SinkError, match="HTTP 401") as info:
        await wrong.write(batch("authdb"))
    assert info.value.retryable
    assert "not-the-password" not in str(info.value)
    await wrong.close()
    anonymous = InfluxDBSink(sink_config(tmp_path, urls=[influxdb_auth.url]))
    with pytest.raises(trawl.SinkError, match="HTTP 401"):
        await anonymous.write(batch("authdb"))
    await anonymous.close()


def run_trawl(tmp_path: Path, targets: ExpositionTargets, influx: str, seconds: float,
              **kw: str) -> tuple[Samples, dict[str, float]]:
    """Run trawl for a while, stop it with SIGTERM; the reference samples and its metrics."""
    port = free_port()
    config = reference_config(tmp_path, targets, port, influx, **{"db": "trawl_test", **kw})
    trawl_proc = TrawlProcess(tmp_path, config, http_port=port).start()
    try:
        time.sleep(seconds)
        trawl_proc.wait_metric('trawl_sink_points_written_total{sink="influx"}',
                               lambda v: v > 0)
        metrics = trawl_proc.metrics()
    finally:
        code = trawl_proc.stop()
    assert code == 0, trawl_proc.log_tail()
    reference = parse_line_protocol((tmp_path / "ref.lp").read_text())
    return reference, metrics


def assert_same(reference: Samples, got: Samples) -> None:
    assert reference, "nothing was scraped"
    missing = {k: sorted(set(v) - set(got.get(k, {}))) for k, v in reference.items()}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"points missing in the server: {list(missing.items())[:5]}"
    extra = set(got) - set(reference)
    assert not extra, f"series the scraper never produced: {sorted(extra)[:5]}"
    for key, points in reference.items():
        for ts, value in points.items():
            assert math.isclose(got[key][ts], value, rel_tol=1e-12), (key, ts)


def test_v1_end_to_end_without_auth(influxdb, targets, tmp_path):
    reference, metrics = run_trawl(tmp_path, targets, f"""
  urls = ["{influxdb.url}"]
  create-database = true
""", seconds=4, db="e2e_v1")
    got = influxdb.samples("e2e_v1")
    assert_same(reference, got)
    assert len(reference) == 3 * (ExpositionTargets.series_per_target + 5)
    assert metrics['trawl_sink_points_dropped_total{sink="influx"}'] == 0


def test_v1_end_to_end_with_auth_and_a_retention_policy(influxdb_auth, targets, tmp_path):
    influxdb_auth.query("CREATE DATABASE e2e_auth")
    influxdb_auth.query("CREATE RETENTION POLICY short ON e2e_auth DURATION 2h REPLICATION 1")
    reference, _ = run_trawl(tmp_path, targets, f"""
  urls = ["{influxdb_auth.url}"]
  username = "{influxdb_auth.username}"
  password = "{influxdb_auth.password}"
""", seconds=4, db="e2e_auth", rp="short")
    assert_same(reference, influxdb_auth.samples("e2e_auth", rp="short"))
    assert influxdb_auth.samples("e2e_auth", rp="autogen") == {}
    log = (tmp_path / "trawl.log").read_text()
    assert influxdb_auth.password not in log


def test_v2_end_to_end_to_victoriametrics(victoriametrics, targets, tmp_path):
    reference, _ = run_trawl(tmp_path, targets, f"""
  urls = ["{victoriametrics.url}"]
  api = "v2"
  org = "my-org"
  token = "my-token"
""", seconds=4, db="e2e_v2", rp="autogen")
    victoriametrics.force_flush()
    # VictoriaMetrics names a series <measurement>_<field> and ignores bucket and org.
    expected = {(name + "_value", tags): pts for (name, tags), pts in reference.items()}
    deadline = time.monotonic() + 20
    while True:
        got = victoriametrics.samples('{job="job"}')
        if all(len(got.get(k, {})) >= len(v) for k, v in expected.items()) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert_same(expected, got)


# ---------------------------------------------------------------- answers no test server gives
class ScriptedServer:
    """A small HTTP/1.1 server on loopback answering each request from a script.

    For what neither InfluxDB 1.6.7 nor VictoriaMetrics does on demand: 503 with
    ``Retry-After``, and InfluxDB 2.x's ``422 partial write`` on ``/api/v2/write``.
    """

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.answers = answers
        self.requests: list[tuple[float, str, bytes]] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = b""
        with trio.move_on_after(10):
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (ln.partition(":") for ln in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    buf += await stream.receive_some(65536)
                body, buf = buf[:length], buf[length:]
                path = lines[0].split(" ")[1]
                if path.startswith("/ping"):
                    status, extra, reply = 204, {}, b""
                else:
                    self.requests.append((trio.current_time(), path, body))
                    self.headers.append(headers)
                    status, extra, reply = self.answers.pop(0) if self.answers \
                        else (204, {}, b"")
                out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(reply)}",
                       "Content-Type: application/json",
                       *(f"{k}: {v}" for k, v in extra.items())]
                await stream.send_all(("\r\n".join(out) + "\r\n\r\n").encode() + reply)


async def eventually(check) -> None:
    with trio.fail_after(30):
        while True:
            if check():
                return
            await trio.sleep(0.05)


async def test_retry_after_from_the_server_sets_the_wait(tmp_path):
    server = ScriptedServer([(503, {"Retry-After": "1"}, b'{"error":"busy"}'),
                             (429, {"Retry-After": "1"}, b'{"error":"slow down"}')])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        sink = InfluxDBSink(sink_config(tmp_path, urls=[server.url],
                                        **{"retry-initial-interval": "20s", "gzip": False}))
        runner = trawl.SinkRunner(sink)
        await nursery.start(runner.run)
        runner.submit(batch("db", n=3))
        await eventually(lambda: runner.stats.points_written >= 3)
        await runner.close()
        nursery.cancel_scope.cancel()
    times = [t for t, _, _ in server.requests]
    assert len(times) == 3
    # Retry-After (1 s) replaced the configured 20 s backoff.
    assert all(0.9 <= b - a < 5 for a, b in itertools.pairwise(times))
    assert runner.stats.batches_retried == 2
    assert server.requests[-1][2].count(b"\n") == 3


async def test_v2_partial_write_is_counted(tmp_path):
    body = (b'{"code":"unprocessable entity","message":"failure writing points to database:'
            b' partial write: field type conflict: input field \\"value\\" on measurement'
            b' \\"m\\" is type float, already exists as type integer dropped=2"}')
    server = ScriptedServer([(422, {}, body)])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        sink = InfluxDBSink(sink_config(tmp_path, urls=[server.url], api="v2", token="t0k",
                                        org="o"))
        runner = trawl.SinkRunner(sink)
        await nursery.start(runner.run)
        runner.submit(batch("db", n=5, rp="rp"))
        await eventually(lambda: runner.stats.batches_written >= 1)
        await runner.close()
        nursery.cancel_scope.cancel()
    assert runner.stats.lines_rejected == 2
    assert runner.stats.points_written == 3
    _, path, _ = server.requests[0]
    assert path.startswith("/api/v2/write?")
    assert "bucket=db%2Frp" in path
    assert "precision=ms" in path


# ---------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, and a server certificate for 127.0.0.1 it signed (PEM files)."""
    import trustme

    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    return root / "ca.pem", root / "cert.pem", root / "key.pem"


async def test_v1_over_https(pki, tmp_path):
    ca = str(pki[0])
    with InfluxDB(tmp_path / "influxdb", tls=pki) as server:
        await trio.to_thread.run_sync(server.query, "CREATE DATABASE tls")
        untrusted = InfluxDBSink(sink_config(tmp_path, urls=[server.url]))
        with pytest.raises(trawl.SinkError, match=r"(?i)certificate") as info:
            await untrusted.open()
        assert info.value.retryable
        await untrusted.close()
        for i, extra in enumerate(({"ssl-ca": ca}, {"insecure-skip-verify": True})):
            sink = InfluxDBSink(sink_config(tmp_path, urls=[server.url], **extra))
            await sink.open()
            await sink.write(batch("tls", n=2, name=f"m{i}"))
            await sink.close()
        got = await trio.to_thread.run_sync(server.samples, "tls")
    assert sorted(k[0] for k in got for _ in got[k]) == ["m0", "m0", "m1", "m1"]


async def test_v2_over_https(pki, tmp_path):
    with VictoriaMetrics(tmp_path / "vm", tls=pki) as server:
        sink = InfluxDBSink(sink_config(tmp_path, urls=[server.url], api="v2",
                                        **{"ssl-ca": str(pki[0])}))
        await sink.open()
        await sink.write(batch("tls", n=3, name="tlsv2"))
        await sink.close()
        await trio.to_thread.run_sync(server.force_flush)
        got: Samples = {}
        with trio.fail_after(20):
            while sum(map(len, got.values())) < 3:
                got = await trio.to_thread.run_sync(server.samples, '{__name__="tlsv2_value"}')
                await trio.sleep(0.2)
    assert sum(map(len, got.values())) == 3


@pytest.mark.parametrize(("settings", "authorization", "path"), [
    ({"username": "u", "password": "p"}, "Basic dTpw", "/write?db=db&precision=ms"),
    ({"token": "t0k"}, "Token t0k", "/write?db=db&precision=ms"),
    ({"api": "v2", "token": "t0k", "org": "o"}, "Token t0k", "/api/v2/write?org=o&bucket=db"),
    # InfluxDB 1.8's compatibility API: the token is username:password, org is "-".
    ({"api": "v2", "username": "u", "password": "p"}, "Token u:p",
     "/api/v2/write?org=-&bucket=db"),
])
async def test_credentials_and_endpoints(tmp_path, settings, authorization, path):
    server = ScriptedServer([])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        sink = InfluxDBSink(sink_config(tmp_path, urls=[server.url], **settings))
        await sink.open()
        await sink.write(batch("db", n=2))
        await sink.close()
        nursery.cancel_scope.cancel()
    assert server.headers[0]["authorization"] == authorization
    assert server.requests[0][1].startswith(path)
