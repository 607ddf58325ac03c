"""A Triton Container Monitor (CMON) simulator: the discovery endpoints over mutual TLS.

As triton-cmon does, it serves ``GET /v<n>/discover`` (``{"containers": [...]}``, each with
``groups``, ``server_uuid``, ``vm_alias``, ``vm_brand``, ``vm_image_uuid``, ``vm_uuid``;
``?groups=a,b`` keeps containers in any of those groups) and ``GET /v<n>/gz/discover``
(``{"cns": [{"server_uuid", "server_hostname"}]}``) for versions 1 and 2, only over TLS
with a client certificate signed by the test CA. The account is the certificate's common
name, as CMON authenticates callers. Errors are restify bodies ``{"code", "message"}``.

It hands out no addresses at all, only UUIDs (targets are ``<uuid>.<dns-suffix>:<port>``);
tests use a ``.invalid`` DNS suffix, which never resolves, and only discover.
"""

from __future__ import annotations

import copy
import json
import socket
import ssl
import threading
import urllib.parse
import uuid as uuidlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

from tests.servers import free_port

VERSIONS = (1, 2)


def container(alias: str, *, groups: list[str] | None = None, brand: str = "joyent",
              vm_uuid: str | None = None, image_uuid: str | None = None,
              server_uuid: str = "44454c4c-5000-104d-8037-b7c04f5a5131") -> dict[str, Any]:
    """A container as CMON's discovery lists it."""
    return {
        "groups": list(groups or []),
        "server_uuid": server_uuid,
        "vm_alias": alias,
        "vm_brand": brand,
        "vm_image_uuid": image_uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, "img-" + alias)),
        "vm_uuid": vm_uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, alias)),
    }


def compute_node(hostname: str) -> dict[str, str]:
    """A compute node as CMON's ``/gz/discover`` lists it."""
    return {"server_uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, "cn-" + hostname)),
            "server_hostname": hostname}


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"code": code, "message": message}).encode()


class _TLSServer(ThreadingHTTPServer):
    """Does the TLS handshake in the request's thread, so a bad client blocks no one."""

    tls_context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # no client certificate, unknown CA ...: the handshake failed
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            tls.close()


class TritonSimulator:
    """A real HTTPS server on 127.0.0.1 speaking CMON's discovery API.

    Args:
      ca: The test CA: it signs the server certificate (for ``server_names``) and is the
        only CA trusted for client certificates.
      containers: Containers per account (the client certificate's common name).
      cns: The compute nodes ``/gz/discover`` lists.
    """

    def __init__(self, ca: trustme.CA, containers: dict[str, list[dict[str, Any]]] | None = None,
                 cns: list[dict[str, str]] | None = None,
                 server_names: tuple[str, ...] = ("127.0.0.1", "localhost", "cmon.triton.test"),
                 ) -> None:
        self.port = free_port()
        self.endpoint = "127.0.0.1"
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
        ca.issue_cert(*server_names).configure_cert(ctx)
        self.ssl_context = ctx
        self._lock = threading.Lock()
        self._containers: dict[str, list[dict[str, Any]]] = {}
        self._cns: list[dict[str, str]] = []
        self._fault: tuple[int, bytes, str] | None = None
        self.requests: list[tuple[str, str]] = []
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.set_containers(containers or {})
        self.set_cns(cns or [])

    @staticmethod
    def client_cert(ca: trustme.CA, account: str) -> trustme.LeafCert:
        """A client certificate for ``account`` (its common name), signed by ``ca``."""
        return ca.issue_cert(account, common_name=account)

    # ------------------------------------------------------------------ data and faults
    def set_containers(self, containers: dict[str, list[dict[str, Any]]]) -> None:
        with self._lock:
            self._containers = copy.deepcopy(containers)

    def set_cns(self, cns: list[dict[str, str]]) -> None:
        with self._lock:
            self._cns = copy.deepcopy(cns)

    def fail(self, status: int = 500, body: str | None = None,
             content_type: str = "application/json") -> None:
        """Answer every request with ``status`` and ``body`` until `heal`."""
        if body is None:
            body = json.dumps({"code": "InternalError", "message": "Internal Server Error"})
        with self._lock:
            self._fault = (status, body.encode(), content_type)

    def garbage(self) -> None:
        """Answer 200 with a body that is not JSON."""
        self.fail(200, "<html><body>503 Service Unavailable</body></html>", "text/html")

    def heal(self) -> None:
        with self._lock:
            self._fault = None

    # ------------------------------------------------------------------ HTTP
    def _answer(self, path: str, account: str) -> tuple[int, bytes, str]:
        with self._lock:
            self.requests.append((path, account))
            fault = self._fault
            containers = copy.deepcopy(self._containers.get(account))
            cns = copy.deepcopy(self._cns)
        if fault is not None:
            return fault
        if containers is None:
            return (*_error(403, "NotAuthorized", f"account {account!r} is not known"),
                    "application/json")
        parsed = urllib.parse.urlsplit(path)
        routes = {f"/v{v}/discover": "containers" for v in VERSIONS}
        routes.update({f"/v{v}/gz/discover": "cns" for v in VERSIONS})
        route = routes.get(parsed.path)
        if route is None:
            return (*_error(404, "ResourceNotFound", f"{parsed.path} does not exist"),
                    "application/json")
        if route == "cns":
            return 200, json.dumps({"cns": cns}).encode(), "application/json"
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        if "groups" in query:
            wanted = query["groups"][0].split(",")
            if not all(wanted):
                return (*_error(400, "BadRequest", 'invalid "groups": empty group name'),
                        "application/json")
            containers = [c for c in containers if set(c["groups"]) & set(wanted)]
        return 200, json.dumps({"containers": containers}).encode(), "application/json"

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
                cert = self.connection.getpeercert() or {}
                account = ""
                for rdn in cert.get("subject", ()):
                    for key, value in rdn:
                        if key == "commonName":
                            account = value
                status, body, ctype = sim._answer(self.path, account)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> TritonSimulator:
        """Listen (again) on the same port."""
        server = _TLSServer(("127.0.0.1", self.port), self._handler())
        server.tls_context = self.ssl_context
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"triton-sim-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections: CMON goes away."""
        if self._server is not None:
            self._server.shutdown()
            with self._lock:
                connections = list(self._connections)
            for conn in connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> TritonSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
