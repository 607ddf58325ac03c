"""A Kubernetes API server simulator: real HTTP(S) on loopback, the real paths and shapes.

It serves what service discovery uses (Prometheus's, vmagent's and trawl's):

- ``GET /api/v1/{nodes,pods,services,endpoints}``,
  ``/api/v1/namespaces/<ns>/{pods,services,endpoints}``,
  ``/apis/discovery.k8s.io/v1/[namespaces/<ns>/]endpointslices`` and
  ``/apis/networking.k8s.io/v1/[namespaces/<ns>/]ingresses``: a ``<Kind>List`` with
  ``metadata.resourceVersion``, paged with ``limit`` and ``continue`` (a snapshot per
  list; ``410 Gone`` once compacted); ``labelSelector`` (``=``, ``==``, ``!=``, ``in``,
  ``notin``, exists, ``!``) and ``fieldSelector`` (``=``, ``==``, ``!=`` on dotted paths).
- ``watch=1&resourceVersion=N[&allowWatchBookmarks=true][&timeoutSeconds=S]``: a chunked
  stream of JSON lines ``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR",
  "object": ...}``, replaying the events after ``N`` then following new ones. An object
  that stops (starts) matching the selectors is sent as ``DELETED`` (``ADDED``), as the
  real server does. A resource version older than the retained history answers
  ``410 Gone`` with a ``Status`` body (or, with ``gone_as_event``, an ``ERROR`` event with
  code 410, which is what a real API server sends once the stream has started).
- Bearer token auth (``401`` with a ``Status`` body), TLS with a trustme CA, and x509
  client certificates from the same CA (`client_certificate`) as the other way to log in.

Tests change the cluster through the Python API (`add`, `modify`, `delete`, `compact`,
`set_outage`), and build realistic objects with `pod`, `service`, `endpoints`,
`endpoint_slice`, `node`, `ingress`. Every address handed out is a loopback address.
"""

from __future__ import annotations

import bisect
import copy
import json
import re
import ssl
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme

Obj = dict[str, Any]

# resource -> (API prefix, kind, apiVersion, namespaced)
RESOURCES: dict[str, tuple[str, str, str, bool]] = {
    "nodes": ("/api/v1", "Node", "v1", False),
    "pods": ("/api/v1", "Pod", "v1", True),
    "services": ("/api/v1", "Service", "v1", True),
    "endpoints": ("/api/v1", "Endpoints", "v1", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1", "EndpointSlice", "discovery.k8s.io/v1",
                       True),
    "ingresses": ("/apis/networking.k8s.io/v1", "Ingress", "networking.k8s.io/v1", True),
}
_PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/discovery\.k8s\.io/v1|/apis/networking\.k8s\.io/v1)"
    r"(?:/namespaces/(?P<ns>[a-z0-9][a-z0-9.-]*))?/(?P<res>[a-z]+)/?$"
)


def status(code: int, reason: str, message: str) -> Obj:
    """A ``metav1.Status`` failure body."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# --- selectors -------------------------------------------------------------------------

_KEY_RE = re.compile(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_VALUE_RE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SET_RE = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """``a=b,c!=d,e in (x,y),f notin (z),g,!h`` as (key, op, values); raises ValueError."""
    out: list[tuple[str, str, set[str]]] = []
    for part in _split_selector(text):
        m = _SET_RE.match(part)
        if m:
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            out.append((m.group(1), m.group(2), values))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", {v.strip()}))
        elif "==" in part:
            k, v = part.split("==", 1)
            out.append((k.strip(), "=", {v.strip()}))
        elif "=" in part:
            k, v = part.split("=", 1)
            out.append((k.strip(), "=", {v.strip()}))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!", set()))
        elif re.fullmatch(r"[A-Za-z0-9._/-]+", part):
            out.append((part, "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement: {part!r}")
    for key, _, values in out:
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"invalid label key {key!r}")
        for value in values:
            if not _VALUE_RE.fullmatch(value):
                raise ValueError(f"invalid label value {value!r}")
    return out


def label_matches(labels: dict[str, str], selector: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in selector:
        present = key in labels
        value = labels.get(key)
        if op == "=" and value not in values:
            return False
        if op == "!=" and value in values:
            return False
        if op == "in" and value not in values:
            return False
        if op == "notin" and value in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    out = []
    for part in _split_selector(text):
        for op in ("!=", "==", "="):
            if op in part:
                k, v = part.split(op, 1)
                out.append((k.strip(), "!=" if op == "!=" else "=", v.strip()))
                break
        else:
            raise ValueError(f"invalid field selector: {part!r}")
    return out


def _field(obj: Obj, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    return "" if cur is None else str(cur)


def field_matches(obj: Obj, selector: list[tuple[str, str, str]]) -> bool:
    return all((_field(obj, path) == value) == (op == "=") for path, op, value in selector)


# --- the server ------------------------------------------------------------------------

class _Watch:
    """One request's filter: resource, namespace and selectors."""

    def __init__(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
        self.resource = resource
        self.namespace = namespace
        self.labels = parse_label_selector(query.get("labelSelector", ""))
        self.fields = parse_field_selector(query.get("fieldSelector", ""))

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return label_matches(meta.get("labels") or {}, self.labels) and field_matches(
            obj, self.fields)


class KubernetesSimulator:
    """An API server on ``127.0.0.1`` in background threads.

    Args:
      workdir: Where the CA certificate is written (``ca_path``) when ``tls``.
      tls: Serve HTTPS with a certificate for 127.0.0.1/localhost from a fresh trustme CA.
      tokens: Accepted bearer tokens; empty accepts any request (like ``kubectl proxy``).
      bookmark_interval: Seconds between ``BOOKMARK`` events on idle watches that asked.
      history: How many events are kept for watches to resume from; older resource
        versions get ``410 Gone``.
    """

    def __init__(self, workdir: Path, *, tls: bool = True, tokens: Iterable[str] = ("s3cr3t",),
                 bookmark_interval: float = 1.0, history: int = 100_000,
                 max_watch_seconds: float = 60.0) -> None:
        self.workdir = workdir
        self.tls = tls
        self.tokens = set(tokens)
        self.bookmark_interval = bookmark_interval
        self.history_size = history
        self.max_watch_seconds = max_watch_seconds
        self.gone_as_event = False
        self.client_users: set[str] = set()  # common names accepted from client certificates
        self.ca: trustme.CA | None = None
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {r: {} for r in RESOURCES}
        self.events: list[tuple[int, str, str, Obj | None, Obj | None]] = []
        self.rv = 1000
        self.oldest_rv = self.rv  # a watch from an older version is answered 410 Gone
        self.outage = False
        self.requests: list[tuple[str, dict[str, str], bool]] = []
        self.responses: list[tuple[str, int]] = []  # (path, status); 200 for watches
        self.snapshots: dict[str, tuple[int, list[Obj]]] = {}  # continue token -> the rest
        self._tokens = 0
        self.expire_continues = False  # answer every continue token 410, as after compaction
        self.gone_events = 0  # ERROR events with code 410 sent inside watch streams
        self.cond = threading.Condition()
        self._stopping = False
        self.server: ThreadingHTTPServer | None = None
        self.ca_path = workdir / "k8s-ca.pem"
        self.port = 0

    # -- lifecycle
    def start(self) -> KubernetesSimulator:
        self.workdir.mkdir(parents=True, exist_ok=True)
        handler = type("Handler", (_Handler,), {"sim": self})
        server = _Server(("127.0.0.1", 0), handler)
        if self.tls:
            ca = self.ca = trustme.CA()
            ca.cert_pem.write_to_path(str(self.ca_path))
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
            # x509 client certificates signed by the same CA authenticate, as with a real
            # API server's --client-ca-file; a client without one falls back to its token.
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ca.configure_trust(ctx)
            server.ssl_context = ctx
        self.server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True, name="k8s-sim").start()
        return self

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def __enter__(self) -> KubernetesSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_certificate(self, user: str) -> tuple[bytes, bytes]:
        """A PEM (certificate chain, key) for ``user``, from now on accepted."""
        assert self.ca is not None, "client certificates need tls=True"
        self.client_users.add(user)
        cert = self.ca.issue_cert(common_name=user)
        return (b"".join(b.bytes() for b in cert.cert_chain_pems),
                cert.private_key_pem.bytes())

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- the cluster
    def _record(self, resource: str, kind: str, old: Obj | None, new: Obj | None) -> None:
        self.events.append((self.rv, resource, kind, old, new))
        if len(self.events) > self.history_size:
            drop = len(self.events) - self.history_size
            self.oldest_rv = self.events[drop - 1][0]
            del self.events[:drop]
        self.cond.notify_all()

    def add(self, resource: str, obj: Obj) -> Obj:
        """Create ``obj`` (metadata filled in: uid, resourceVersion, creationTimestamp)."""
        with self.cond:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            key = (meta.get("namespace", ""), meta["name"])
            if key in self.objects[resource]:
                raise ValueError(f"{resource} {key} exists")
            self.rv += 1
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            meta["resourceVersion"] = str(self.rv)
            self.objects[resource][key] = obj
            self._record(resource, "ADDED", None, obj)
            return obj

    def modify(self, resource: str, obj: Obj) -> Obj:
        """Replace the object with the same namespace and name."""
        with self.cond:
            obj = copy.deepcopy(obj)
            meta = obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            old = self.objects[resource][key]
            self.rv += 1
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["resourceVersion"] = str(self.rv)
            self.objects[resource][key] = obj
            self._record(resource, "MODIFIED", old, obj)
            return obj

    def delete(self, resource: str, namespace: str, name: str) -> None:
        with self.cond:
            old = self.objects[resource].pop((namespace, name))
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record(resource, "DELETED", old, gone)

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        with self.cond:
            return copy.deepcopy(self.objects[resource][(namespace, name)])

    def compact(self) -> None:
        """Forget the event history: watches from any older version get 410 Gone."""
        with self.cond:
            self.events.clear()
            self.snapshots.clear()
            self.oldest_rv = self.rv
            self.cond.notify_all()

    def set_outage(self, down: bool) -> None:
        """While down, every request is answered 503 and open watches are cut."""
        with self.cond:
            self.outage = down
            self.cond.notify_all()

    def watch_requests(self, resource: str = "") -> list[dict[str, str]]:
        with self.cond:
            return [q for path, q, _ in self.requests
                    if q.get("watch") in ("1", "true") and path.endswith("/" + resource)]

    # -- serving (called from handler threads)
    def list_body(self, w: _Watch, limit: int = 0, token: str = "") -> bytes:
        """A list, or one page of it: with ``limit``, ``metadata.continue`` names the rest
        of the same snapshot; a continue token whose snapshot was compacted away is
        answered ``410 Gone`` by the caller (`Expired`)."""
        with self.cond:
            _, kind, api_version, _ = RESOURCES[w.resource]
            if token:
                if token not in self.snapshots or self.expire_continues:
                    raise KeyError(token)
                rv, items = self.snapshots.pop(token)
            else:
                items = [o for o in self.objects[w.resource].values() if w.matches(o)]
                items.sort(key=lambda o: (o["metadata"].get("namespace", ""),
                                          o["metadata"]["name"]))
                rv = self.rv
            meta: Obj = {"resourceVersion": str(rv)}
            if limit and len(items) > limit:
                items, rest = items[:limit], items[limit:]
                self._tokens += 1
                next_token = f"page-{self._tokens}"
                self.snapshots[next_token] = (rv, rest)
                meta["continue"] = next_token
                meta["remainingItemCount"] = len(rest)
            body = {"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta,
                    "items": items}
            return json.dumps(body).encode()

    def _typed(self, resource: str, obj: Obj) -> Obj:
        _, kind, api_version, _ = RESOURCES[resource]
        return {"kind": kind, "apiVersion": api_version, **obj}

    def watch_events(self, w: _Watch, since: int, deadline: float, bookmarks: bool,
                     handler: _Handler) -> None:
        """Stream events after ``since`` until ``deadline``; raises on a gone client."""
        next_bookmark = time.monotonic() + self.bookmark_interval
        with self.cond:
            if since == 0:
                for o in sorted(self.objects[w.resource].values(),
                                key=lambda o: o["metadata"]["resourceVersion"]):
                    if w.matches(o):
                        handler.send_event({"type": "ADDED", "object": self._typed(w.resource, o)})
                since = self.rv
        while True:
            with self.cond:
                while True:
                    if self._stopping or self.outage:
                        raise ConnectionAbortedError("watch cut")
                    if since < self.oldest_rv:
                        # The history was compacted under this watch.
                        self.gone_events += 1
                        handler.send_event({"type": "ERROR", "object": status(
                            410, "Expired", f"too old resource version: {since} "
                            f"({self.oldest_rv})")})
                        return
                    # events are sorted by rv; find the first after `since`
                    pos = bisect.bisect_right(self.events, since, key=lambda e: e[0])
                    if pos < len(self.events):
                        batch = self.events[pos:]
                        break
                    now = time.monotonic()
                    if now >= deadline:
                        return
                    if bookmarks and now >= next_bookmark:
                        batch = []
                        break
                    self.cond.wait(min(deadline, next_bookmark if bookmarks else deadline) - now)
                current_rv = self.rv
            if not batch:
                handler.send_event({"type": "BOOKMARK", "object": {
                    "kind": RESOURCES[w.resource][1], "apiVersion": RESOURCES[w.resource][2],
                    "metadata": {"resourceVersion": str(current_rv)}}})
                next_bookmark = time.monotonic() + self.bookmark_interval
                since = max(since, current_rv)
                continue
            lines = []
            for rv, resource, kind, old, new in batch:
                since = rv
                if resource != w.resource:
                    continue
                was, now_ = w.matches(old), w.matches(new)
                if kind == "MODIFIED" and was and not now_:
                    kind = "DELETED"
                elif kind == "MODIFIED" and now_ and not was:
                    kind = "ADDED"
                elif kind == "DELETED" and not was:
                    continue  # it never matched: the watcher never saw it
                elif kind in ("ADDED", "MODIFIED") and not now_:
                    continue
                lines.append({"type": kind, "object": self._typed(resource, new or old or {})})
            handler.send_events(lines)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that refuses our certificate or hangs up is not the simulator's error.
        if not isinstance(sys.exc_info()[1], ssl.SSLError | OSError):
            super().handle_error(request, client_address)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # Handshake in the handler thread, so a slow client cannot block accept().
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        return sock, addr


class _Handler(BaseHTTPRequestHandler):
    sim: KubernetesSimulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError):
                self.close_connection = True
                raise
            self.connection.settimeout(None)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, ssl.SSLError, OSError):
            pass

    def _reply(self, code: int, body: Obj | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.sim.cond:
            self.sim.responses.append((urllib.parse.urlsplit(self.path).path, code))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_event(self, event: Obj) -> None:
        self.send_events([event])

    def send_events(self, events: list[Obj]) -> None:
        if not events:
            return
        data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        sim = self.sim
        parsed = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        auth = self.headers.get("Authorization", "")
        authorized = not sim.tokens or (
            auth.startswith("Bearer ") and auth[len("Bearer "):] in sim.tokens)
        if not authorized and isinstance(self.connection, ssl.SSLSocket):
            subject = dict(x[0] for x in (self.connection.getpeercert() or {}).get(
                "subject", ()))
            authorized = subject.get("commonName") in sim.client_users
        with sim.cond:
            sim.requests.append((parsed.path, query, authorized))
            outage = sim.outage
        if outage:
            self._reply(503, status(503, "ServiceUnavailable", "the server is shutting down"))
            return
        if not authorized:
            self._reply(401, status(401, "Unauthorized", "Unauthorized"))
            return
        if parsed.path in ("/version", "/healthz", "/readyz", "/livez"):
            if parsed.path == "/version":
                self._reply(200, {"major": "1", "minor": "26", "gitVersion": "v1.26.0-sim"})
            else:
                self._reply(200, b"ok")
            return
        m = _PATH.match(parsed.path)
        res = m.group("res") if m else ""
        if not m or res not in RESOURCES or RESOURCES[res][0] != m.group("prefix") or (
                m.group("ns") and not RESOURCES[res][3]):
            self._reply(404, status(404, "NotFound", "the server could not find the requested "
                                    "resource"))
            return
        try:
            w = _Watch(res, m.group("ns"), query)
        except ValueError as exc:
            self._reply(400, status(400, "BadRequest", str(exc)))
            return
        if query.get("watch") not in ("1", "true"):
            try:
                body = sim.list_body(w, int(query.get("limit") or 0), query.get("continue", ""))
            except KeyError:
                self._reply(410, status(410, "Expired", "The provided continue parameter is "
                                        "too old to display a consistent list result."))
                return
            except ValueError:
                self._reply(400, status(400, "BadRequest", "invalid limit"))
                return
            self._reply(200, body)
            return
        rv_text = query.get("resourceVersion", "")
        try:
            since = int(rv_text or 0)
        except ValueError:
            self._reply(400, status(400, "BadRequest", f"invalid resource version {rv_text!r}"))
            return
        with sim.cond:
            too_old = 0 < since < sim.oldest_rv
            gone_as_event = sim.gone_as_event
        if too_old and not gone_as_event:
            self._reply(410, status(410, "Expired", f"too old resource version: {since} "
                                    f"({sim.oldest_rv})"))
            return
        timeout = min(float(query.get("timeoutSeconds", sim.max_watch_seconds)),
                      sim.max_watch_seconds)
        with sim.cond:
            sim.responses.append((parsed.path, 200))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            sim.watch_events(w, since, time.monotonic() + timeout,
                             query.get("allowWatchBookmarks") in ("1", "true"), self)
        except ConnectionAbortedError:
            # An outage or a stop: cut the stream without its final chunk.
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# --- realistic objects -----------------------------------------------------------------

def _meta(name: str, namespace: str | None, labels: dict[str, str] | None,
          annotations: dict[str, str] | None) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def container(name: str, image: str, ports: list[tuple[str, int, str]] = ()) -> Obj:  # type: ignore[assignment]
    """A container spec; ``ports`` as ``(name, containerPort, protocol)``."""
    c: Obj = {"name": name, "image": image, "resources": {}, "imagePullPolicy": "IfNotPresent"}
    if ports:
        c["ports"] = [{**({"name": n} if n else {}), "containerPort": p, "protocol": proto}
                      for n, p, proto in ports]
    return c


def pod(name: str, namespace: str, ip: str, *, node: str = "node-a", host_ip: str = "127.0.0.1",
        containers: list[Obj] | None = None, init_containers: list[Obj] | None = None,
        labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        owner: tuple[str, str] | None = None, phase: str = "Running", ready: bool = True) -> Obj:
    """A scheduled pod with status, container statuses and an optional controller owner."""
    containers = containers if containers is not None else [
        container("app", "registry.local/app:1.0", [("http", 8080, "TCP")])]
    meta = _meta(name, namespace, labels, annotations)
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, owner[1])),
                                    "controller": True, "blockOwnerDeletion": True}]
    cond = "True" if ready else "False"
    statuses = [{"name": c["name"], "ready": ready, "restartCount": 0, "image": c["image"],
                 "imageID": f"docker-pullable://{c['image']}@sha256:{'ab' * 32}",
                 "containerID": "containerd://"
                                + uuid.uuid5(uuid.NAMESPACE_OID, name + c["name"]).hex,
                 "started": ready, "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}
                for c in containers]
    spec: Obj = {"nodeName": node, "containers": containers, "restartPolicy": "Always",
                 "serviceAccountName": "default", "dnsPolicy": "ClusterFirst"}
    st: Obj = {"phase": phase, "hostIP": host_ip, "podIP": ip, "podIPs": [{"ip": ip}] if ip else [],
               "startTime": "2026-01-01T00:00:01Z", "qosClass": "BestEffort",
               "conditions": [
                   {"type": "Initialized", "status": "True"},
                   {"type": "Ready", "status": cond},
                   {"type": "ContainersReady", "status": cond},
                   {"type": "PodScheduled", "status": "True"}],
               "containerStatuses": statuses}
    if not ip:
        del st["podIP"]
    if init_containers:
        spec["initContainers"] = init_containers
        st["initContainerStatuses"] = [
            {"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"],
             "imageID": "", "containerID": f"containerd://init-{name}-{c['name']}",
             "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
            for c in init_containers]
    return {"metadata": meta, "spec": spec, "status": st}


def service(name: str, namespace: str, cluster_ip: str, ports: list[tuple[str, int, str]], *,
            type: str = "ClusterIP", labels: dict[str, str] | None = None,
            annotations: dict[str, str] | None = None, selector: dict[str, str] | None = None,
            external_name: str = "", load_balancer_ip: str = "") -> Obj:
    spec: Obj = {"type": type, "sessionAffinity": "None"}
    if type == "ExternalName":
        spec["externalName"] = external_name
    else:
        spec["clusterIP"] = cluster_ip
        spec["clusterIPs"] = [cluster_ip]
    if load_balancer_ip:
        spec["loadBalancerIP"] = load_balancer_ip
    if selector:
        spec["selector"] = selector
    spec["ports"] = [{**({"name": n} if n else {}), "port": p, "protocol": proto,
                      "targetPort": p} for n, p, proto in ports]
    return {"metadata": _meta(name, namespace, labels, annotations), "spec": spec,
            "status": {"loadBalancer": {}}}


def _ref(p: Obj) -> Obj:
    return {"kind": "Pod", "namespace": p["metadata"]["namespace"], "name": p["metadata"]["name"],
            "uid": p["metadata"].get("uid", "")}


def endpoints(name: str, namespace: str, ready: list[Obj], not_ready: list[Obj],
              ports: list[tuple[str, int, str]], *, labels: dict[str, str] | None = None,
              extra_addresses: list[str] = ()) -> Obj:  # type: ignore[assignment]
    """Endpoints of pods (ready and not ready) plus bare addresses (no targetRef)."""
    def addr(p: Obj) -> Obj:
        return {"ip": p["status"]["podIP"], "nodeName": p["spec"]["nodeName"],
                "targetRef": _ref(p)}
    subset: Obj = {"addresses": [addr(p) for p in ready] + [{"ip": a} for a in extra_addresses],
                   "ports": [{**({"name": n} if n else {}), "port": port, "protocol": proto}
                             for n, port, proto in ports]}
    if not_ready:
        subset["notReadyAddresses"] = [addr(p) for p in not_ready]
    return {"metadata": _meta(name, namespace, labels, None), "subsets": [subset]}


def endpoint_slice(name: str, namespace: str, service_name: str, ready: list[Obj],
                   not_ready: list[Obj], ports: list[tuple[str, int, str, str]], *,
                   terminating: list[Obj] = ()) -> Obj:  # type: ignore[assignment]
    """A discovery.k8s.io/v1 slice; ``ports`` as ``(name, port, protocol, appProtocol)``."""
    def ep(p: Obj, is_ready: bool, is_terminating: bool = False) -> Obj:
        return {"addresses": [p["status"]["podIP"]],
                "conditions": {"ready": is_ready, "serving": is_ready or is_terminating,
                               "terminating": is_terminating},
                "nodeName": p["spec"]["nodeName"], "zone": "zone-a", "targetRef": _ref(p)}
    return {
        "metadata": _meta(name, namespace, {
            "kubernetes.io/service-name": service_name,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}, None),
        "addressType": "IPv4",
        "endpoints": ([ep(p, True) for p in ready] + [ep(p, False) for p in not_ready]
                      + [ep(p, False, True) for p in terminating]),
        "ports": [{"name": n, "port": port, "protocol": proto,
                   **({"appProtocol": app} if app else {})} for n, port, proto, app in ports],
    }


def node(name: str, internal_ip: str, *, external_ip: str = "",
         labels: dict[str, str] | None = None,
         annotations: dict[str, str] | None = None, kubelet_port: int = 10250,
         extra_addresses: list[tuple[str, str]] = ()) -> Obj:  # type: ignore[assignment]
    addresses = [{"type": "InternalIP", "address": internal_ip}]
    if external_ip:
        addresses.append({"type": "ExternalIP", "address": external_ip})
    addresses += [{"type": t, "address": a} for t, a in extra_addresses]
    addresses.append({"type": "Hostname", "address": name})
    return {"metadata": _meta(name, None, labels, annotations),
            "spec": {"providerID": f"sim://{name}", "podCIDR": "127.64.0.0/24"},
            "status": {"addresses": addresses,
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.26.0", "architecture": "amd64"}}}


def ingress(name: str, namespace: str, rules: list[tuple[str, list[str] | None]], *,
            tls_hosts: list[str] = (), class_name: str | None = "nginx",  # type: ignore[assignment]
            labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
            backend: str = "web") -> Obj:
    """Rules as ``(host, paths)``; ``paths=None`` means a rule without ``http``."""
    spec: Obj = {}
    if class_name is not None:
        spec["ingressClassName"] = class_name
    if tls_hosts:
        spec["tls"] = [{"hosts": list(tls_hosts), "secretName": f"{name}-tls"}]
    spec["rules"] = []
    for host, paths in rules:
        rule: Obj = {"host": host}
        if paths is not None:
            rule["http"] = {"paths": [
                {"path": p, "pathType": "Prefix",
                 "backend": {"service": {"name": backend, "port": {"number": 80}}}}
                for p in paths]}
        spec["rules"].append(rule)
    return {"metadata": _meta(name, namespace, labels, annotations), "spec": spec,
            "status": {"loadBalancer": {}}}


def populate(sim: KubernetesSimulator) -> None:
    """A small realistic cluster: 3 nodes, 2 namespaces, pods with several containers and
    ports (and init containers, a pending pod without an IP, a pod without ports), multi-port
    services of each type, endpoints and slices with not-ready addresses, ingresses."""
    sim.add("nodes", node("node-a", "127.0.10.1", external_ip="127.0.20.1", labels={
        "kubernetes.io/hostname": "node-a", "node-role.kubernetes.io/control-plane": "",
        "topology.kubernetes.io/zone": "zone-a"}, annotations={
        "node.alpha.kubernetes.io/ttl": "0"},
        extra_addresses=[("InternalDNS", "node-a.cluster.internal"),
                         ("InternalIP", "127.0.10.11")]))
    sim.add("nodes", node("node-b", "127.0.10.2", labels={
        "kubernetes.io/hostname": "node-b", "topology.kubernetes.io/zone": "zone-b"},
        kubelet_port=10255))
    sim.add("nodes", node("node-c", "127.0.10.3", external_ip="127.0.20.3",
                          extra_addresses=[("ExternalDNS", "node-c.example.invalid")]))

    web = [container("web", "registry.local/web:2.3", [("http", 8080, "TCP"),
                                                       ("metrics", 9090, "TCP")]),
           container("sidecar", "registry.local/envoy:1.25", [("admin", 15000, "TCP"),
                                                               ("", 15090, "TCP"),
                                                               ("dns", 5353, "UDP")]),
           container("logger", "registry.local/fluent-bit:2.0")]
    init = [container("migrate", "registry.local/migrate:1"),
            container("warmup", "registry.local/warmup:1", [("warm", 7070, "TCP")])]
    pods = []
    for i, (n, ready) in enumerate([("node-a", True), ("node-b", True), ("node-a", False)]):
        pods.append(sim.add("pods", pod(
            f"web-7d9f-{i}", "prod", f"127.1.0.{10 + i}", node=n,
            host_ip="127.0.10.1" if n == "node-a" else "127.0.10.2",
            containers=web, init_containers=init if i == 0 else None,
            labels={"app.kubernetes.io/name": "web", "pod-template-hash": "7d9f", "tier": "front"},
            annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                         "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            owner=("ReplicaSet", "web-7d9f"), ready=ready)))
    db = sim.add("pods", pod("db-0", "prod", "127.1.0.20", node="node-b", host_ip="127.0.10.2",
                             containers=[container("postgres", "postgres:15", [
                                 ("postgres", 5432, "TCP")]),
                                 container("exporter", "postgres-exporter:0.11", [
                                     ("metrics", 9187, "TCP")])],
                             labels={"app": "db"}, owner=("StatefulSet", "db")))
    sim.add("pods", pod("batch-x", "jobs", "127.1.1.5", node="node-c", host_ip="127.0.10.3",
                        containers=[container("work", "busybox:1.36")], labels={"job-name": "x"},
                        owner=("Job", "batch-x"), phase="Succeeded", ready=False))
    sim.add("pods", pod("pending-1", "prod", "", node="", host_ip="", labels={"app": "web"},
                        phase="Pending", ready=False))
    sim.add("pods", pod("static-pod", "kube-system", "127.0.10.1", node="node-a",
                        host_ip="127.0.10.1",
                        containers=[container("etcd", "etcd:3.5", [("", 2381, "TCP")])],
                        labels={"component": "etcd"}))

    sim.add("services", service("web", "prod", "127.2.0.10", [
        ("http", 80, "TCP"), ("metrics", 9090, "TCP"), ("dns", 53, "UDP")],
        labels={"app.kubernetes.io/name": "web"}, annotations={"prometheus.io/scrape": "true"},
        selector={"app.kubernetes.io/name": "web"}))
    sim.add("services", service("db", "prod", "None", [("postgres", 5432, "TCP"),
                                                       ("metrics", 9187, "TCP")],
                                selector={"app": "db"}))
    sim.add("services", service("edge", "prod", "127.2.0.20", [("https", 443, "TCP")],
                                type="LoadBalancer", load_balancer_ip="127.3.0.1"))
    sim.add("services", service("upstream", "jobs", "", [("", 8443, "TCP")],
                                type="ExternalName", external_name="upstream.example.invalid"))
    sim.add("services", service("nodeport", "jobs", "127.2.0.30", [("web", 8080, "TCP")],
                                type="NodePort", labels={"team": "ops"}))

    sim.add("endpoints", endpoints("web", "prod", pods[:2], pods[2:], [
        ("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
        labels={"app.kubernetes.io/name": "web"}))
    sim.add("endpoints", endpoints("db", "prod", [db], [], [("postgres", 5432, "TCP")]))
    sim.add("endpoints", endpoints("external", "jobs", [], [], [("", 9000, "TCP")],
                                   extra_addresses=["127.4.0.1", "127.4.0.2"]))

    sim.add("endpointslices", endpoint_slice("web-abc12", "prod", "web", pods[:1], pods[2:], [
        ("http", 8080, "TCP", "http"), ("metrics", 9090, "TCP", "")], terminating=pods[1:2]))
    sim.add("endpointslices", endpoint_slice("db-xyz89", "prod", "db", [db], [], [
        ("postgres", 5432, "TCP", "")]))

    sim.add("ingresses", ingress("web", "prod", [("web.example.invalid", ["/", "/api"]),
                                                 ("admin.example.invalid", [""])],
                                 tls_hosts=["*.example.invalid"],
                                 labels={"app.kubernetes.io/name": "web"},
                                 annotations={"nginx.ingress.kubernetes.io/rewrite-target": "/"}))
    sim.add("ingresses", ingress("plain", "jobs", [("jobs.local.invalid", None)],
                                 class_name=None))
