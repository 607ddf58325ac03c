"""InfluxDB 1.6.7 from Debian on loopback (``../shared/TESTENV.md`` section 1).

Also the helpers the InfluxDB sink tests share: Prometheus targets served by one Python
process on many ports (`ExpositionTargets`), a ``trawl run`` subprocess (`TrawlProcess`),
and parsing line protocol as trawl writes it (`parse_line_protocol`).
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import ServerProcess, free_port, require_binary, wait_http, wait_until

Key = tuple[str, tuple[tuple[str, str], ...]]
"""A series: measurement and its sorted (tag, value) pairs."""
Samples = dict[Key, dict[int, float]]
"""Series → {timestamp ms: value}."""


def restartable_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A server stopped for a while (an outage) must get its port back: a port from the
    ephemeral range could meanwhile become the local port of some outgoing connection.
    """
    low = 20000
    try:
        low_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low_ephemeral = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, max(low + 1000, low_ephemeral))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class InfluxDB:
    """``influxd`` on a free loopback port, with its data in ``workdir``.

    ``stop()`` then ``start()`` again keeps the data and the port (an outage).
    """

    def __init__(self, workdir: Path, *, auth: bool = False,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        """``tls``: (CA, certificate, key) PEM files to serve HTTPS with."""
        self.workdir = workdir
        self.port = restartable_port()
        self.rpc_port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.auth = auth
        self.username = ""
        self.password = ""
        self.process: ServerProcess | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "influxdb.conf"
        self.config_path.write_text(textwrap.dedent(f"""\
            reporting-enabled = false
            bind-address = "127.0.0.1:{self.rpc_port}"
            [meta]
              dir = "{workdir}/meta"
            [data]
              dir = "{workdir}/data"
              wal-dir = "{workdir}/wal"
              query-log-enabled = false
            [monitor]
              store-enabled = false
            [http]
              enabled = true
              bind-address = "127.0.0.1:{self.port}"
              auth-enabled = {"true" if auth else "false"}
              https-enabled = {"true" if tls else "false"}
              https-certificate = "{tls[1] if tls else ''}"
              https-private-key = "{tls[2] if tls else ''}"
              log-enabled = false
              pprof-enabled = false
            [logging]
              level = "warn"
              suppress-logo = true
            [continuous_queries]
              enabled = false
            """))

    def start(self) -> InfluxDB:
        binary = require_binary("influxd")
        self.process = ServerProcess(
            "influxd", [binary, "run", "-config", str(self.config_path)], self.workdir
        ).start()
        try:
            wait_until(lambda: self._request("/ping", {}, method="GET")[0] == 204, 30,
                       "influxd to answer /ping")
        except TimeoutError:
            raise TimeoutError(f"influxd did not start:\n{self.process.log_tail()}") from None
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20)
            self.process = None

    def __enter__(self) -> InfluxDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_admin(self, username: str = "admin", password: str = "s3cret-pw") -> None:
        """The first admin user (allowed without credentials); later calls use it."""
        self.query(f"CREATE USER {username} WITH PASSWORD '{password}' WITH ALL PRIVILEGES")
        self.username, self.password = username, password

    def _request(self, path: str, params: dict[str, str], data: bytes | None = None,
                 method: str = "POST") -> tuple[int, bytes]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, data=data, method=method)
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
        try:
            with urllib.request.urlopen(req, timeout=30, context=context) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def query(self, q: str, db: str = "") -> dict[str, Any]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        status, body = self._request("/query", params, data=b"")
        if status >= 300:
            raise RuntimeError(f"InfluxDB query {q!r}: HTTP {status}: {body!r}")
        data: dict[str, Any] = json.loads(body)
        return data

    def write(self, db: str, lines: str, rp: str = "", precision: str = "ms") -> int:
        params = {"db": db, "precision": precision}
        if rp:
            params["rp"] = rp
        status, _ = self._request("/write", params, data=lines.encode())
        return status

    def samples(self, db: str, rp: str = "autogen") -> Samples:
        """Every point of every measurement in ``db.rp``, by series."""
        data = self.query(f'SELECT "value" FROM "{db}"."{rp}"./.*/ GROUP BY *', db)
        out: Samples = defaultdict(dict)
        for result in data.get("results", []):
            if "error" in result:
                raise RuntimeError(result["error"])
            for series in result.get("series", []):
                tags = tuple(sorted((k, v) for k, v in series.get("tags", {}).items() if v))
                key = (series["name"], tags)
                for ts, value in series["values"]:
                    if value is not None:
                        out[key][int(ts)] = float(value)
        return dict(out)


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_line_protocol(text: str) -> Samples:
    """trawl's line protocol (one ``value`` field, ms timestamps), by series."""
    out: Samples = defaultdict(dict)
    for line in text.splitlines():
        if not line.strip():
            continue
        key, fields, ts = line.rsplit(" ", 2)
        parts = _split_unescaped(key, ",")
        tags = tuple(sorted(
            (_unescape(k), _unescape(v))
            for k, v in (_split_unescaped(p, "=")[:2] for p in parts[1:])
        ))
        name, _, value = fields.partition("=")
        assert name == "value", line
        out[(_unescape(parts[0]), tags)][int(ts)] = float(value)
    return dict(out)


TARGETS_SCRIPT = r"""
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ports = [int(p) for p in sys.argv[1:]]
counts = {}
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        port = self.server.server_address[1]
        with lock:
            counts[port] = n = counts.get(port, 0) + 1
        body = (
            "# HELP trawl_test_requests_total Requests served.\n"
            "# TYPE trawl_test_requests_total counter\n"
            f"trawl_test_requests_total{{port=\"{port}\"}} {n}\n"
            "# TYPE trawl_test_temperature gauge\n"
            f"trawl_test_temperature{{room=\"a b\",kind=\"x,y\"}} {20 + (n % 7) * 0.25}\n"
            f"trawl_test_temperature{{room=\"c=d\",kind=\"z\"}} {-n / 3}\n"
            "# TYPE trawl_test_conflict gauge\n"
            f"trawl_test_conflict {n * 1.5}\n"
            "# TYPE trawl_test_duration_seconds histogram\n"
            f"trawl_test_duration_seconds_bucket{{le=\"0.1\"}} {n}\n"
            f"trawl_test_duration_seconds_bucket{{le=\"+Inf\"}} {2 * n}\n"
            f"trawl_test_duration_seconds_sum {n * 0.07}\n"
            f"trawl_test_duration_seconds_count {2 * n}\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

servers = [ThreadingHTTPServer(("127.0.0.1", p), Handler) for p in ports]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


class ExpositionTargets:
    """``count`` Prometheus targets on free loopback ports, served by one Python process.

    Every target serves 8 series whose values change with each request.
    """

    series_per_target = 8

    def __init__(self, workdir: Path, count: int) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(count)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.process: ServerProcess | None = None

    def start(self) -> ExpositionTargets:
        script = self.workdir / "targets.py"
        self.workdir.mkdir(parents=True, exist_ok=True)
        script.write_text(TARGETS_SCRIPT)
        self.process = ServerProcess(
            "targets", [sys.executable, str(script), *map(str, self.ports)], self.workdir
        ).start()
        for port in self.ports:
            wait_http(f"http://127.0.0.1:{port}/metrics", timeout=20)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> ExpositionTargets:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def reference_config(workdir: Path, targets: ExpositionTargets, http_port: int,
                     influx_keys: str, *, db: str, rp: str = "autogen",
                     job: str = "job") -> str:
    """A trawl configuration that scrapes ``targets`` every second into an ``[[influxdb]]``
    sink named ``influx`` (its spool in ``workdir``, plus ``influx_keys``) and into the
    reference: a file sink ``ref`` at ``workdir/ref.lp`` fed by the same scraper."""
    addresses = ", ".join(f'"{a}"' for a in targets.addresses)
    return f"""
[http]
  bind-address = "127.0.0.1:{http_port}"

[[static-discovery]]
  id = "targets"
  targets = [{addresses}]

[[scraper]]
  name = "{job}"
  db = "{db}"
  rp = "{rp}"
  discoverer-id = "targets"
  discoverer-service = "static-discovery"
  scrape-interval = "1s"
  scrape-timeout = "1s"
  sinks = ["influx", "ref"]

[[file-sink]]
  name = "ref"
  path = "{workdir}/ref.lp"

[[influxdb]]
  name = "influx"
  spool-dir = "{workdir}/spool"
  retry-max-interval = "2s"
{influx_keys}
"""


def trawl_binary() -> str:
    path = Path(sys.executable).with_name("trawl")
    return str(path) if path.exists() else require_binary("trawl")


class TrawlProcess:
    """``trawl run -c CONFIG`` in ``workdir``, its log in ``workdir/<name>.log``."""

    def __init__(self, workdir: Path, config: str, name: str = "trawl",
                 http_port: int | None = None) -> None:
        self.workdir = workdir
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config)
        self.http_port = http_port
        self.process: ServerProcess | None = None

    def start(self) -> TrawlProcess:
        self.process = ServerProcess(
            self.name, [trawl_binary(), "--log-level", "info", "run", "-c",
                        str(self.config_path)], self.workdir,
            env={"PYTHONUNBUFFERED": "1"},
        ).start()
        if self.http_port:
            try:
                wait_http(f"http://127.0.0.1:{self.http_port}/-/ready", timeout=30)
            except TimeoutError:
                self.stop(timeout=5)
                raise TimeoutError(f"trawl did not start:\n{self.log_tail()}") from None
        return self

    def metrics(self) -> dict[str, float]:
        """trawl's own /metrics as ``{'name{labels}': value}``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                    timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or ``sig``), and wait; returns the exit code."""
        if self.process is None or self.process.proc is None:
            return None
        proc = self.process.proc
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no flushing, no goodbye."""
        if self.process is not None and self.process.proc is not None:
            os.kill(self.process.proc.pid, signal.SIGKILL)
            self.process.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else ""

    def wait_metric(self, key: str, check: Any, timeout: float = 30.0) -> None:
        wait_until(lambda: check(self.metrics().get(key, float("nan"))), timeout,
                   f"trawl metric {key}")
