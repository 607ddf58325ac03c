"""``trawl run`` as a real subprocess on loopback, for the operations tests.

`TrawlProcess` writes a configuration, starts ``python -m trawl run`` with standard error
in a log file (or on a pseudo-terminal), waits until its HTTP endpoint answers, and stops
it by PID with SIGINT (SIGKILL after a grace period).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import free_port, wait_until


class TargetServer:
    """A loopback HTTP target whose answer the test changes while it runs.

    Every request gets ``status`` (settable): 200 with ``body``, otherwise an error whose
    body echoes the request's ``Authorization`` (decoded too) and ``X-Consul-Token``
    headers, as a careless server might. ``authorizations`` records those headers.
    Use as a context manager, or call `close`.
    """

    def __init__(self, status: int = 200, body: str = "# TYPE up_total counter\nup_total 1\n"
                 ) -> None:
        self.status = status
        self.body = body
        self.authorizations: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                auth = self.headers.get("Authorization", "")
                consul = self.headers.get("X-Consul-Token", "")
                outer.authorizations.append(auth)
                if consul:
                    outer.authorizations.append(f"X-Consul-Token {consul}")
                if outer.status == 200:
                    body = outer.body.encode()
                else:
                    decoded = ""
                    if auth.startswith("Basic "):
                        decoded = base64.b64decode(auth[6:]).decode(errors="replace")
                    body = (f"denied: Authorization: {auth} ({decoded}), "
                            f"X-Consul-Token: {consul}\n").encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.address}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TargetServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port() -> int:
    """A loopback port nothing listens on (a target that is down)."""
    return free_port()


def scrape_config(http_port: int, targets: list[str], out: Path, *, extra: str = "",
                  scraper_extra: str = "", labels: dict[str, str] | None = None) -> str:
    """A configuration: ``[http]`` on ``http_port``, one static discoverer and scraper
    ``node`` for ``targets`` (every second), a JSON-lines file sink at ``out``."""
    label_lines = "".join(f'    {k} = "{v}"\n' for k, v in (labels or {}).items())
    return f"""
[http]
  bind-address = "127.0.0.1:{http_port}"

[[static-discovery]]
  id = "nodes"
  targets = {json.dumps(targets)}
  [static-discovery.labels]
{label_lines}
[[scraper]]
  name = "node"
  db = "prom"
  rp = "autogen"
  discoverer-service = "static-discovery"
  discoverer-id = "nodes"
  scrape-interval = "1s"
  scrape-timeout = "1s"
{scraper_extra}

[[file-sink]]
  name = "out"
  default = true
  path = "{out}"
  format = "jsonl"
{extra}
"""


class TrawlProcess:
    """A running ``trawl run``; use as a context manager.

    Args:
      workdir: Holds the configuration, the log and the spool.
      config: The configuration's TOML text.
      args: Options placed before ``run`` (``--log-level``, ``--log-format``).
      http_port: The ``[http]`` port written in ``config`` (waited for when given).
    """

    def __init__(self, workdir: Path, config: str, *, args: tuple[str, ...] = (),
                 http_port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.config_path = workdir / "trawl.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / "trawl.log"
        self.args = args
        self.http_port = http_port
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "trawl", *self.args, "run", "-c", str(self.config_path)]

    def __enter__(self) -> TrawlProcess:
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if self.http_port is not None:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"trawl exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_until(ready, timeout, "trawl to be ready")

    def targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=2) as r:
            return list(json.load(r)["data"]["activeTargets"])

    def wait_health(self, wanted: dict[str, str], timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until each scrape URL in ``wanted`` has that health; return the targets."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = self.targets()
            health = {t["scrapeUrl"]: t["health"] for t in found}
            return all(health.get(url) == h for url, h in wanted.items())

        wait_until(check, timeout, f"targets {wanted}")
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT, then SIGKILL after ``timeout``; returns the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return int(proc.returncode)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_text(path: Path, text: str, timeout: float = 20.0) -> str:
    """Wait until a file contains ``text``; returns its content."""
    content = ""

    def check() -> bool:
        nonlocal content
        content = path.read_text(errors="replace") if path.exists() else ""
        return text in content

    deadline = time.monotonic() + timeout
    wait_until(check, max(deadline - time.monotonic(), 0.1), f"{text!r} in {path}")
    return content
