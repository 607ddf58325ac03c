"""A Marathon simulator: ``GET /v2/apps`` (with ``embed=apps.tasks``) on loopback.

It answers as Marathon 1.x does: ``{"apps": [...]}`` with each app's ``labels``,
``container`` (``docker.image``, ``docker.portMappings`` or ``portMappings``),
``portDefinitions``, ``requirePorts``, ``networks`` and, when embedded, its ``tasks`` (``id``,
``host``, ``ports``, ``ipAddresses``); ``{"message": ...}`` bodies for errors; 401 for a
missing or wrong ``Authorization`` header when credentials are set. Tests change the data
with `MarathonSimulator.set_apps` and inject faults with `fail` / `garbage` / `stop`.

Every task address it hands out must be a loopback address (checked).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.servers import free_port


def _check_loopback(host: str, where: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"{where}: {host!r} is not a loopback address")


def task(task_id: str, host: str = "127.0.0.1", ports: list[int] | None = None,
         ip_addresses: list[str] | None = None, app_id: str = "") -> dict[str, Any]:
    """A task as Marathon embeds it in an app."""
    return {
        "id": task_id,
        "appId": app_id,
        "host": host,
        "ports": list(ports or []),
        "ipAddresses": [{"ipAddress": a, "protocol": "IPv4" if ":" not in a else "IPv6"}
                        for a in (ip_addresses or [])],
        "slaveId": "20231101-000000-16777343-5050-1-S0",
        "stagedAt": "2023-11-01T00:00:00.000Z",
        "startedAt": "2023-11-01T00:00:01.000Z",
        "state": "TASK_RUNNING",
        "version": "2023-11-01T00:00:00.000Z",
    }


def app(app_id: str, tasks: list[dict[str, Any]], *, labels: dict[str, str] | None = None,
        image: str | None = None, docker_port_mappings: list[dict[str, Any]] | None = None,
        port_mappings: list[dict[str, Any]] | None = None,
        port_definitions: list[dict[str, Any]] | None = None, require_ports: bool = False,
        network_mode: str | None = None) -> dict[str, Any]:
    """An app as ``/v2/apps`` lists it (Marathon 1.x field names)."""
    for t in tasks:
        t["appId"] = app_id
    out: dict[str, Any] = {
        "id": app_id,
        "cmd": None,
        "args": None,
        "cpus": 0.1,
        "mem": 64.0,
        "instances": len(tasks),
        "labels": dict(labels or {}),
        "requirePorts": require_ports,
        "portDefinitions": list(port_definitions or []),
        "tasksRunning": len(tasks),
        "tasksStaged": 0,
        "version": "2023-11-01T00:00:00.000Z",
        "tasks": tasks,
    }
    if image is not None or docker_port_mappings is not None or port_mappings is not None:
        container: dict[str, Any] = {"type": "DOCKER", "volumes": [],
                                     "docker": {"image": image or "", "forcePullImage": False}}
        if docker_port_mappings is not None:
            container["docker"]["network"] = "BRIDGE"
            container["docker"]["portMappings"] = docker_port_mappings
        if port_mappings is not None:
            container["portMappings"] = port_mappings
        out["container"] = container
    if network_mode is not None:
        out["networks"] = [{"mode": network_mode, "name": "dcos"
                            if network_mode == "container" else None}]
    return out


class _Server(ThreadingHTTPServer):
    """Does any TLS handshake in the request's thread, so a bad client blocks no one."""

    tls_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls_context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class MarathonSimulator:
    """A real HTTP(S) server on 127.0.0.1 speaking Marathon's ``/v2/apps`` API.

    Args:
      apps: The apps to list (see `app` and `task`).
      bearer_token: Require ``Authorization: Bearer <token>``.
      auth_token: Require DC/OS's ``Authorization: token=<token>``.
      basic_auth: Require this ``(username, password)``.
      ssl_context: Serve HTTPS with this server context.
    """

    def __init__(self, apps: list[dict[str, Any]] | None = None, *,
                 bearer_token: str | None = None, auth_token: str | None = None,
                 basic_auth: tuple[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.ssl_context = ssl_context
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._apps: list[dict[str, Any]] = []
        self._fault: tuple[int, bytes, str] | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.request_times: list[float] = []  # time.monotonic() of each request
        self._expected_auth: str | None = None
        if bearer_token is not None:
            self._expected_auth = f"Bearer {bearer_token}"
        elif auth_token is not None:
            self._expected_auth = f"token={auth_token}"
        elif basic_auth is not None:
            pair = f"{basic_auth[0]}:{basic_auth[1]}".encode()
            self._expected_auth = "Basic " + base64.b64encode(pair).decode()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.set_apps(apps or [])

    # ------------------------------------------------------------------ data and faults
    def set_apps(self, apps: list[dict[str, Any]]) -> None:
        """Replace the apps Marathon lists (addresses are checked to be loopback)."""
        for a in apps:
            for t in a.get("tasks", []):
                _check_loopback(t["host"], f"task {t['id']} host")
                for addr in t.get("ipAddresses", []):
                    _check_loopback(addr["ipAddress"], f"task {t['id']} ipAddress")
        with self._lock:
            self._apps = copy.deepcopy(apps)

    def fail(self, status: int = 500, body: str | None = None,
             content_type: str = "application/json") -> None:
        """Answer every request with ``status`` and ``body`` until `heal`."""
        if body is None:
            body = json.dumps({"message": "An unexpected server error occurred."})
        with self._lock:
            self._fault = (status, body.encode(), content_type)

    def garbage(self) -> None:
        """Answer 200 with a body that is not JSON (a proxy's HTML page)."""
        self.fail(200, "<html><body>502 Bad Gateway</body></html>", "text/html")

    def heal(self) -> None:
        with self._lock:
            self._fault = None

    # ------------------------------------------------------------------ HTTP
    def _answer(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
        with self._lock:
            self.requests.append((path, headers))
            self.request_times.append(time.monotonic())
            fault = self._fault
            apps = copy.deepcopy(self._apps)
        if fault is not None:
            return fault
        if self._expected_auth is not None and headers.get("authorization") != \
                self._expected_auth:
            return 401, json.dumps({"message": "Invalid username or password."}).encode(), \
                "application/json"
        parsed = urllib.parse.urlsplit(path)
        if parsed.path not in ("/v2/apps", "/v2/apps/"):
            return 404, json.dumps({"message": "HTTP 404 Not Found"}).encode(), \
                "application/json"
        embed = urllib.parse.parse_qs(parsed.query).get("embed", [])
        if "apps.tasks" not in embed:
            for a in apps:
                a.pop("tasks", None)
        return 200, json.dumps({"apps": apps}).encode(), "application/json"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with sim._lock:
                    sim._connections.add(self.connection)

            def finish(self) -> None:
                with sim._lock:
                    sim._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, body, ctype = sim._answer(self.path, headers)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="Mesosphere"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> MarathonSimulator:
        """Listen (again) on the same port."""
        server = _Server(("127.0.0.1", self.port), self._handler())
        server.tls_context = self.ssl_context
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"marathon-sim-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: the server goes away (connections are refused)."""
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                connections = list(self._connections)
            for conn in connections:  # kept-alive connections go away too
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()  # joins the handler threads
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> MarathonSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
