"""A loopback simulator of the Compute Engine instances API and Google's OAuth2 token endpoint.

- ``POST /token``: the service-account JWT-bearer exchange (``grant_type=urn:ietf:params:
  oauth:grant-type:jwt-bearer``, ``assertion=<RS256 JWT>``) that google-auth performs with a
  service-account file whose ``token_uri`` points here. The JWT's signature is checked
  against the registered account's public key, its ``aud`` against Google's token audience
  (or this endpoint) and its ``scope``; failures answer
  ``400 {"error": "invalid_grant", "error_description": ...}`` as Google does.
- ``GET /compute/v1/projects/<project>/zones/<zone>/instances`` with ``filter``,
  ``maxResults``, ``pageToken``: ``{"kind": "compute#instanceList", "items": [...],
  "nextPageToken": ...}``; errors as ``{"error": {"code", "message", "errors": [...]}}``.

``filter`` understands the simple comparisons the Compute API documents (``name = web-1``,
``status != TERMINATED``, ``labels.env = prod``, several of them parenthesized and joined by
spaces or ``AND``); anything else is refused with 400, as an unsupported filter would be.
Every address it hands out is loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

RESOURCE_BASE = "https://www.googleapis.com/compute/v1"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
"""The ``aud`` Google's token endpoint expects (google-auth sends it whatever ``token_uri``)."""
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/compute.readonly"
_COMPARISON = re.compile(
    r'\s*\(?\s*([a-zA-Z][\w.]*)\s*(!=|=|eq\b|ne\b)\s*(?:"([^"]*)"|([^\s()"]+))\s*\)?\s*'
    r'(?:AND\s+)?', re.IGNORECASE)


def _loopback(ip: str) -> str:
    if not ipaddress.ip_address(ip).is_loopback:
        raise ValueError(f"simulator addresses must be loopback, not {ip}")
    return ip


@dataclass
class Interface:
    name: str
    ip: str
    nat_ip: str | None = None
    """None: no access config at all; "": an access config without an address yet."""

    def __post_init__(self) -> None:
        _loopback(self.ip)
        if self.nat_ip:
            _loopback(self.nat_ip)


@dataclass
class Instance:
    name: str
    interfaces: list[Interface]
    status: str = "RUNNING"
    machine_type: str = "e2-medium"
    tags: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str | None] = field(default_factory=dict)


class GCESimulator:
    """Compute Engine + OAuth2 token endpoint on ``http://127.0.0.1:<port>``.

    Args:
      project, zone: the one project and zone that exist (others are 404 / 400).
      page_size: most items per page (a smaller ``maxResults`` wins).
    """

    def __init__(self, *, project: str, zone: str, page_size: int = 2) -> None:
        self.project = project
        self.zone = zone
        self.page_size = page_size
        self.lock = threading.Lock()
        self.instances: dict[str, Instance] = {}
        self.accounts: dict[str, Any] = {}       # client_email -> public key
        self.tokens: set[str] = set()
        self.token_requests = 0
        self.token_failures = 0
        self.list_requests: list[dict[str, str]] = []
        self.fail_list: tuple[int, str, str] | None = None   # (code, reason, message)
        self.delay = 0.0                                      # seconds before each list answer
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def add_account(self, client_email: str, public_key: Any) -> None:
        with self.lock:
            self.accounts[client_email] = public_key

    def add(self, instance: Instance) -> None:
        with self.lock:
            self.instances[instance.name] = instance

    def remove(self, name: str) -> None:
        with self.lock:
            del self.instances[name]

    def instance_json(self, inst: Instance) -> dict[str, Any]:
        project = f"{RESOURCE_BASE}/projects/{self.project}"
        zone = f"{project}/zones/{self.zone}"
        region = self.zone.rsplit("-", 1)[0]
        ifaces = []
        for iface in inst.interfaces:
            out: dict[str, Any] = {
                "kind": "compute#networkInterface", "name": iface.name,
                "network": f"{project}/global/networks/net-{iface.name}",
                "subnetwork": f"{project}/regions/{region}/subnetworks/sub-{iface.name}",
                "networkIP": iface.ip, "fingerprint": "bL4gJb3r0bw=", "stackType": "IPV4_ONLY",
            }
            if iface.nat_ip is not None:
                access: dict[str, Any] = {"kind": "compute#accessConfig",
                                          "type": "ONE_TO_ONE_NAT", "name": "External NAT",
                                          "networkTier": "PREMIUM"}
                if iface.nat_ip:
                    access["natIP"] = iface.nat_ip
                out["accessConfigs"] = [access]
            ifaces.append(out)
        body: dict[str, Any] = {
            "kind": "compute#instance",
            "id": str(zlib.crc32(inst.name.encode()) * 1_000_003 + 7_000_000_000_000_000_000),
            "creationTimestamp": "2023-02-01T10:00:00.000-08:00",
            "name": inst.name,
            "machineType": f"{zone}/machineTypes/{inst.machine_type}",
            "status": inst.status,
            "zone": zone,
            "networkInterfaces": ifaces,
            "selfLink": f"{zone}/instances/{inst.name}",
            "metadata": {"kind": "compute#metadata", "fingerprint": "xL9u0n1Fh2c=",
                         "items": [{"key": k} if v is None else {"key": k, "value": v}
                                   for k, v in inst.metadata.items()]},
            "tags": {"fingerprint": "42WmSpB8rSM="},
        }
        if inst.tags:
            body["tags"]["items"] = list(inst.tags)
        if inst.labels:
            body["labels"] = dict(inst.labels)
        return body

    def start(self) -> GCESimulator:
        sim = self

        class Handler(_Handler):
            simulator = sim

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GCESimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _matches(filter_text: str, body: dict[str, Any]) -> bool:
    pos = 0
    ok = True
    while pos < len(filter_text):
        m = _COMPARISON.match(filter_text, pos)
        if m is None or m.end() == pos:
            raise ValueError(filter_text)
        name, op = m.group(1), m.group(2).lower()
        value = m.group(3) if m.group(3) is not None else m.group(4)
        actual: Any = body
        for part in name.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        regex = re.compile(re.escape(value).replace(r"\*", ".*") + r"\Z")
        hit = actual is not None and bool(regex.match(str(actual)))
        ok = ok and (hit if op in ("=", "eq") else not hit)
        pos = m.end()
    return ok


class _Handler(BaseHTTPRequestHandler):
    simulator: GCESimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, reason: str, message: str, status: str) -> None:
        self._send(code, {"error": {"code": code, "message": message, "errors": [
            {"message": message, "domain": "global", "reason": reason}], "status": status}})

    def do_POST(self) -> None:
        sim = self.simulator
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        if urllib.parse.urlsplit(self.path).path != "/token":
            self._send(404, {"error": "not_found"})
            return
        with sim.lock:
            sim.token_requests += 1
        error = self._check_assertion(form)
        if error:
            with sim.lock:
                sim.token_failures += 1
            self._send(400, {"error": "invalid_grant", "error_description": error})
            return
        token = "ya29." + secrets.token_urlsafe(32)
        with sim.lock:
            sim.tokens.add(token)
        self._send(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _check_assertion(self, form: dict[str, str]) -> str:
        sim = self.simulator
        if form.get("grant_type") != JWT_BEARER:
            return "Invalid grant_type."
        assertion = form.get("assertion", "")
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        key = sim.accounts.get(claims.get("iss", ""))
        if key is None:
            return "Invalid grant: account not found"
        try:
            jwt.decode(assertion, key, algorithms=["RS256"],
                       audience=[GOOGLE_TOKEN_AUDIENCE, sim.token_uri])
        except jwt.InvalidAudienceError:
            return "Invalid JWT: Failed audience check."
        except jwt.PyJWTError:
            return "Invalid JWT Signature."
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid OAuth scope or ID token audience provided."
        return ""

    def do_GET(self) -> None:
        sim = self.simulator
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = url.path.strip("/").split("/")
        if (len(parts) != 7 or parts[:3] != ["compute", "v1", "projects"]
                or parts[4] != "zones" or parts[6] != "instances"):
            self._error(404, "notFound", f"The requested URL {url.path} was not found.",
                        "NOT_FOUND")
            return
        with sim.lock:
            sim.list_requests.append(query)
        if sim.delay:
            time.sleep(sim.delay)
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in sim.tokens:
            self._error(401, "authError" if auth else "required",
                        "Request had invalid authentication credentials. Expected OAuth 2 "
                        "access token, login cookie or other valid authentication credential."
                        if auth else "Login Required.", "UNAUTHENTICATED")
            return
        project, zone = parts[3], parts[5]
        if project != sim.project:
            self._error(404, "notFound", f"The resource 'projects/{project}' was not found",
                        "NOT_FOUND")
            return
        if zone != sim.zone:
            self._error(400, "invalid", f"Invalid value for field 'zone': '{zone}'. "
                        "Unknown zone.", "INVALID_ARGUMENT")
            return
        if sim.fail_list is not None:
            code, reason, message = sim.fail_list
            self._error(code, reason, message, "UNAVAILABLE")
            return
        try:
            max_results = int(query.get("maxResults", "500"))
            if not 0 <= max_results <= 500:
                raise ValueError
        except ValueError:
            self._error(400, "invalid", "Invalid value for field 'maxResults': "
                        f"'{query.get('maxResults')}'. Must be in the range [0, 500].",
                        "INVALID_ARGUMENT")
            return
        start = 0
        if query.get("pageToken"):
            try:
                start = int(base64.urlsafe_b64decode(query["pageToken"]).decode().split(":")[1])
            except (ValueError, IndexError):
                self._error(400, "invalid", "Invalid value for field 'pageToken': "
                            f"'{query['pageToken']}'.", "INVALID_ARGUMENT")
                return
        with sim.lock:
            items = [sim.instance_json(i) for _, i in sorted(sim.instances.items())]
        if query.get("filter"):
            try:
                items = [i for i in items if _matches(query["filter"], i)]
            except ValueError:
                self._error(400, "invalid", "Invalid list filter expression.",
                            "INVALID_ARGUMENT")
                return
        size = min(sim.page_size, max_results or 500)
        body: dict[str, Any] = {
            "kind": "compute#instanceList",
            "id": f"projects/{project}/zones/{zone}/instances",
            "items": items[start:start + size],
            "selfLink": f"{RESOURCE_BASE}/projects/{project}/zones/{zone}/instances",
        }
        if start + size < len(items):
            body["nextPageToken"] = base64.urlsafe_b64encode(
                f"page:{start + size}".encode()).decode()
        if not body["items"]:
            del body["items"]
        self._send(200, body)


class GoogleFront:
    """An HTTPS ``CONNECT`` proxy on loopback that answers every tunnel itself.

    Programs that cannot be given an endpoint (Prometheus 2.42's GCE SD always calls
    ``https://compute.googleapis.com``) reach the simulator through it: with
    ``HTTPS_PROXY=<front.url>`` and ``SSL_CERT_FILE=<front.ca_file>`` their ``CONNECT
    compute.googleapis.com:443`` is accepted, TLS is terminated here with a certificate
    for that name from a test CA, and the requests inside are served by the simulator.
    It never opens a connection anywhere.
    """

    def __init__(self, simulator: GCESimulator, ca_file: Any, ca: Any) -> None:
        import ssl

        self.simulator = simulator
        self.ca_file = ca_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("compute.googleapis.com", "www.googleapis.com").configure_cert(
            self.context)
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GoogleFront:
        front = self

        class Tunnel(_Handler):
            simulator = front.simulator

            def do_CONNECT(self) -> None:
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                try:
                    tls = front.context.wrap_socket(self.connection, server_side=True)
                except OSError:
                    self.close_connection = True
                    return

                class Inner(_Handler):
                    simulator = front.simulator

                try:
                    Inner(tls, self.client_address, self.server)
                finally:
                    tls.close()
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Tunnel)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GoogleFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
