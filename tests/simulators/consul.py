"""A Consul HTTP API simulator: a real HTTP(S) server on loopback.

It serves what Prometheus's and vmagent's Consul discovery use, with Consul's paths, query
parameters, JSON shapes, blocking queries and ACL errors:

- ``GET /v1/agent/self`` (the agent's datacenter, ``Config.Datacenter``);
- ``GET /v1/catalog/services`` (service name to the union of its tags);
- ``GET /v1/catalog/service/<name>`` (``CatalogService`` entries);
- ``GET /v1/health/service/<name>`` (``ServiceEntry``: ``Node``, ``Service``, ``Checks``).

Query parameters: ``dc`` (another datacenter is "No path to datacenter"), ``stale`` /
``consistent``, ``node-meta=key:value`` (repeatable), ``tag`` (repeatable), ``passing``,
``ns`` and ``partition`` (Consul Enterprise; ``*`` means all), ``index`` and ``wait``
(blocking queries, answered with ``X-Consul-Index``; the wait gets Consul's random
jitter of up to wait/16), ``token``.

ACLs: when the simulator has a ``token``, a request must carry it in ``X-Consul-Token``,
``Authorization: Bearer`` or ``?token=``. A wrong token is ``403 ACL not found``; no
token is the anonymous token under ``default_policy = deny``: ``/v1/agent/self`` is
``403 Permission denied`` and catalog and health answers are empty, with
``X-Consul-Results-Filtered-By-ACLs: true``. Basic auth (``basic_auth=(user, password)``)
is what a reverse proxy in front of Consul would check: ``401`` when wrong.

TLS: ``tls=trustme.CA()`` serves HTTPS with a certificate for ``127.0.0.1``, ``::1``,
``localhost`` and ``consul.test``; ``verify_incoming=True`` requires a client
certificate from the same CA, as Consul's ``verify_incoming`` does.

Every address handed out must be a loopback address; `register` refuses others.

Tests change the catalog through `register`, `deregister`, `update`, `set_node_meta`,
`set_check`, ...; each change takes the next Raft index and wakes blocked queries, like
Consul. `fail_with` makes every API call fail with a given HTTP status until cleared.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import re
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
CATALOG = "/v1/catalog/services"


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration (``"10s"``, ``"120000ms"``, ``"1m30s"``), as Consul reads it."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def _loopback(address: str) -> None:
    if not address:
        return
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if address != "localhost":
            raise ValueError(f"{address!r}: the simulator hands out loopback addresses only"
                             ) from None
        return
    if not ip.is_loopback:
        raise ValueError(f"{address!r}: the simulator hands out loopback addresses only")


@dataclass
class Node:
    """A Consul node (``structs.Node``)."""

    name: str
    address: str = "127.0.0.1"
    meta: dict[str, str] = field(default_factory=lambda: {"consul-network-segment": ""})
    tagged_addresses: dict[str, str] | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    partition: str = "default"
    serf_status: str = PASSING
    create_index: int = 0
    modify_index: int = 0

    def tagged(self) -> dict[str, str]:
        if self.tagged_addresses is not None:
            return dict(self.tagged_addresses)
        return {"lan": self.address, "lan_ipv4": self.address,
                "wan": self.address, "wan_ipv4": self.address}


@dataclass
class Instance:
    """A registered service instance (``structs.NodeService``) with its health check."""

    id: str
    service: str
    node: str
    port: int
    address: str = ""
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    tagged_addresses: dict[str, dict[str, Any]] = field(default_factory=dict)
    namespace: str = "default"
    partition: str = "default"
    status: str = PASSING
    maintenance: bool = False
    create_index: int = 0
    modify_index: int = 0


class ConsulSimulator:
    """A Consul agent (and its servers) on a free loopback port; a context manager.

    Args:
      datacenter: The agent's datacenter.
      token: The ACL token every request must carry (``None``: ACLs disabled).
      basic_auth: ``(user, password)`` a proxy in front of Consul would check.
      tls: A ``trustme.CA`` to serve HTTPS with (``None``: plain HTTP).
      verify_incoming: Require a client certificate signed by ``tls``.
      enterprise: Consul Enterprise fills ``Namespace`` and ``Partition``; OSS leaves
        them out of its answers and ignores ``ns`` and ``partition``.
      host: ``127.0.0.1`` or ``::1``.
    """

    def __init__(self, *, datacenter: str = "dc1", token: str | None = None,
                 basic_auth: tuple[str, str] | None = None, tls: Any = None,
                 verify_incoming: bool = False, enterprise: bool = True,
                 host: str = "127.0.0.1", consul_service: bool = True) -> None:
        _loopback(host)
        self.datacenter = datacenter
        self.token = token
        self.basic_auth = basic_auth
        self.enterprise = enterprise
        self.host = host
        # One lock; one condition per watched thing (the catalog, each service), so a
        # change wakes only the blocking queries it concerns.
        self._lock = threading.RLock()
        self._conds: dict[str, threading.Condition] = {}
        self._index = 12
        self._services_index = self._index
        self._service_index: dict[str, int] = {}
        self.nodes: dict[str, Node] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self._by_service: dict[str, dict[tuple[str, str], Instance]] = {}
        self.failing: tuple[int, str] | None = None
        self.requests: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self._closed = False
        self._ssl: ssl.SSLContext | None = None
        self.tls = tls
        if tls is not None:
            cert = tls.issue_cert("127.0.0.1", "::1", "localhost", "consul.test")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(ctx)
            if verify_incoming:
                tls.configure_trust(ctx)
                ctx.verify_mode = ssl.CERT_REQUIRED
            self._ssl = ctx
        self._server = _Server(self, host)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None
        self.server_node = self.add_node("consul-server-1", host)
        if consul_service:
            self.register("consul", node="consul-server-1", port=8300, id="consul",
                          namespace="default")

    # ------------------------------------------------------------------ lifecycle
    @property
    def scheme(self) -> str:
        return "https" if self._ssl else "http"

    @property
    def address(self) -> str:
        """``host:port``, as Kapacitor's ``address`` and Prometheus's ``server`` take it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    def start(self) -> ConsulSimulator:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="consul-simulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._notify_all()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> ConsulSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_ca(self, path: Path) -> str:
        """Write the CA certificate (PEM) to ``path``; return the path."""
        self.tls.cert_pem.write_to_path(str(path))
        return str(path)

    # ------------------------------------------------------------------ catalog changes
    def _cond_for(self, key: str) -> threading.Condition:
        cond = self._conds.get(key)
        if cond is None:
            cond = self._conds[key] = threading.Condition(self._lock)
        return cond

    def _notify_all(self) -> None:
        for cond in self._conds.values():
            cond.notify_all()

    def _bump(self, *services: str, catalog: bool = False) -> int:
        """Take the next Raft index for the changed services; wake blocked queries."""
        self._index += 1
        if catalog:
            self._services_index = self._index
            self._cond_for(CATALOG).notify_all()
        for name in services:
            self._service_index[name] = self._index
            self._cond_for(name).notify_all()
        return self._index

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold the lock across several changes so blocked queries see them together."""
        with self._lock:
            yield

    def add_node(self, name: str, address: str = "127.0.0.1", *,
                 meta: Mapping[str, str] | None = None,
                 tagged_addresses: Mapping[str, str] | None = None,
                 partition: str = "default") -> Node:
        _loopback(address)
        for value in (tagged_addresses or {}).values():
            _loopback(value)
        with self._lock:
            node = Node(name, address, partition=partition,
                        tagged_addresses=dict(tagged_addresses) if tagged_addresses else None)
            if meta is not None:
                node.meta = dict(meta)
            node.create_index = node.modify_index = self._bump(catalog=True)
            self.nodes[name] = node
            return node

    def register(self, service: str, *, port: int, node: str | None = None,
                 id: str | None = None, address: str = "", tags: Sequence[str] = (),
                 meta: Mapping[str, str] | None = None,
                 tagged_addresses: Mapping[str, Mapping[str, Any]] | None = None,
                 namespace: str = "default", partition: str = "default",
                 status: str = PASSING) -> Instance:
        """Register (or replace) an instance, as ``PUT /v1/catalog/register`` does."""
        _loopback(address)
        for value in (tagged_addresses or {}).values():
            _loopback(str(value.get("address", "")))
        with self._lock:
            node_name = node or self.server_node.name
            if node_name not in self.nodes:
                raise KeyError(f"no node {node_name!r}: add_node first")
            inst = Instance(id or service, service, node_name, port, address, list(tags),
                            dict(meta or {}),
                            {k: dict(v) for k, v in (tagged_addresses or {}).items()},
                            namespace, partition, status)
            key = (node_name, inst.id)
            old = self.instances.get(key)
            if old is not None:
                del self._by_service[old.service][key]
            index = self._bump(service, *([old.service] if old else []), catalog=True)
            inst.create_index = old.create_index if old else index
            inst.modify_index = index
            self.instances[key] = inst
            self._by_service.setdefault(service, {})[key] = inst
            return inst

    def _find(self, service_id: str, node: str | None) -> Instance:
        matches = [i for (n, sid), i in self.instances.items()
                   if sid == service_id and (node is None or n == node)]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} instances with id {service_id!r}")
        return matches[0]

    def deregister(self, service_id: str, node: str | None = None) -> None:
        with self._lock:
            inst = self._find(service_id, node)
            del self.instances[(inst.node, inst.id)]
            del self._by_service[inst.service][(inst.node, inst.id)]
            self._bump(inst.service, catalog=True)

    def update(self, service_id: str, node: str | None = None, **changes: Any) -> Instance:
        """Change fields of an instance (``port``, ``tags``, ``meta``, ``address`` ...)."""
        with self._lock:
            inst = self._find(service_id, node)
            if "address" in changes:
                _loopback(changes["address"])
            for key, value in changes.items():
                if not hasattr(inst, key) or key in ("id", "service", "node"):
                    raise AttributeError(f"cannot change {key!r}")
                setattr(inst, key, value)
            inst.modify_index = self._bump(inst.service, catalog="tags" in changes)
            return inst

    def set_check(self, service_id: str, status: str, node: str | None = None) -> None:
        """Set the service check's status (``passing``, ``warning``, ``critical``)."""
        self.update(service_id, node, status=status)

    def set_maintenance(self, service_id: str, on: bool, node: str | None = None) -> None:
        self.update(service_id, node, maintenance=on)

    def _node_services(self, node: str) -> list[str]:
        return sorted({i.service for i in self.instances.values() if i.node == node})

    def set_node_meta(self, node: str, meta: Mapping[str, str]) -> None:
        with self._lock:
            n = self.nodes[node]
            n.meta = dict(meta)
            n.modify_index = self._bump(*self._node_services(node), catalog=True)

    def set_node_health(self, node: str, status: str) -> None:
        """Set the node's ``serfHealth`` check."""
        with self._lock:
            self.nodes[node].serf_status = status
            self._bump(*self._node_services(node))

    def fail_with(self, status: int | None, message: str = "rpc error: No cluster leader"
                  ) -> None:
        """Answer every API request with ``status`` (``None``: work again)."""
        with self._lock:
            self.failing = (status, message) if status else None
            self._notify_all()

    @property
    def index(self) -> int:
        return self._index

    # ------------------------------------------------------------------ queries
    def _visible(self, inst: Instance, q: _Query) -> bool:
        node = self.nodes[inst.node]
        if self.enterprise:
            if q.namespace != "*" and inst.namespace != (q.namespace or "default"):
                return False
            if q.partition != "*" and inst.partition != (q.partition or "default"):
                return False
        for key, value in q.node_meta:
            if node.meta.get(key) != value:
                return False
        return all(t in inst.tags for t in q.tags)

    def _checks(self, inst: Instance) -> list[dict[str, Any]]:
        node = self.nodes[inst.node]
        checks = [self._check(node, "serfHealth", "Serf Health Status", node.serf_status,
                              "Agent alive and reachable", None)]
        checks.append(self._check(node, f"service:{inst.id}", f"Service '{inst.service}' check",
                                  inst.status, f"HTTP GET: {inst.status}", inst))
        if inst.maintenance:
            checks.append(self._check(node, f"_service_maintenance:{inst.id}",
                                      "Service Maintenance Mode", CRITICAL,
                                      "", inst, notes="Maintenance mode is enabled"))
        return checks

    def _check(self, node: Node, check_id: str, name: str, status: str, output: str,
               inst: Instance | None, notes: str = "") -> dict[str, Any]:
        check: dict[str, Any] = {
            "Node": node.name, "CheckID": check_id, "Name": name, "Status": status,
            "Notes": notes, "Output": output,
            "ServiceID": inst.id if inst else "", "ServiceName": inst.service if inst else "",
            "ServiceTags": list(inst.tags) if inst else [],
            "Type": "http" if inst and not check_id.startswith("_") else "",
            "Interval": "10s" if inst and not check_id.startswith("_") else "",
            "Timeout": "", "ExposedPort": 0, "Definition": {},
            "CreateIndex": node.create_index, "ModifyIndex": self._index,
        }
        if self.enterprise:
            check["Namespace"] = inst.namespace if inst else "default"
            check["Partition"] = node.partition
        return check

    def _node_json(self, node: Node) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ID": node.id, "Node": node.name, "Address": node.address,
            "Datacenter": self.datacenter, "TaggedAddresses": node.tagged(),
            "Meta": dict(node.meta),
            "CreateIndex": node.create_index, "ModifyIndex": node.modify_index,
        }
        if self.enterprise:
            out["Partition"] = node.partition
        return out

    def _service_json(self, inst: Instance) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Kind": "", "ID": inst.id, "Service": inst.service, "Tags": list(inst.tags),
            "Address": inst.address, "Meta": dict(inst.meta), "Port": inst.port,
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {},
            "CreateIndex": inst.create_index, "ModifyIndex": inst.modify_index,
        }
        if inst.tagged_addresses:
            out["TaggedAddresses"] = {k: dict(v) for k, v in inst.tagged_addresses.items()}
        if self.enterprise:
            out["Namespace"] = inst.namespace
            out["Partition"] = inst.partition
        return out

    def _catalog_service_json(self, inst: Instance) -> dict[str, Any]:
        node = self.nodes[inst.node]
        out: dict[str, Any] = {
            "ID": node.id, "Node": node.name, "Address": node.address,
            "Datacenter": self.datacenter, "TaggedAddresses": node.tagged(),
            "NodeMeta": dict(node.meta), "ServiceKind": "", "ServiceID": inst.id,
            "ServiceName": inst.service, "ServiceTags": list(inst.tags),
            "ServiceAddress": inst.address,
            "ServiceTaggedAddresses": {k: dict(v) for k, v in inst.tagged_addresses.items()}
            or None,
            "ServiceWeights": {"Passing": 1, "Warning": 1}, "ServiceMeta": dict(inst.meta),
            "ServicePort": inst.port, "ServiceEnableTagOverride": False,
            "ServiceProxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "ServiceConnect": {},
            "CreateIndex": inst.create_index, "ModifyIndex": inst.modify_index,
        }
        if out["ServiceTaggedAddresses"] is None:
            del out["ServiceTaggedAddresses"]
        if self.enterprise:
            out["Namespace"] = inst.namespace
            out["Partition"] = inst.partition
        return out

    def _instances(self, service: str, q: _Query) -> list[Instance]:
        found = [i for i in self._by_service.get(service, {}).values()
                 if self._visible(i, q)]
        found.sort(key=lambda i: (i.node, i.id))
        return found

    def watched(self, path: str) -> tuple[str, int]:
        """What a blocking query on ``path`` waits on, and its current index (lock held).

        A service's index moves when one of its instances, their nodes or their checks
        change; an unknown service's is the catalog's, as in Consul.
        """
        if path == CATALOG:
            return CATALOG, self._services_index
        for prefix in ("/v1/catalog/service/", "/v1/health/service/"):
            if path.startswith(prefix):
                name = unquote(path[len(prefix):])
                if name in self._service_index:
                    return name, self._service_index[name]
                return CATALOG, self._services_index
        raise LookupError(path)

    def answer(self, path: str, q: _Query) -> tuple[int, Any]:
        """The JSON answer and its index for an API path (the lock is held)."""
        if path == CATALOG:
            services: dict[str, set[str]] = {}
            for inst in self.instances.values():
                if self._visible(inst, q._replace_tags()):
                    services.setdefault(inst.service, set()).update(inst.tags)
            body = {name: sorted(tags) for name, tags in sorted(services.items())}
            return self._services_index, body
        for prefix in ("/v1/catalog/service/", "/v1/health/service/"):
            if path.startswith(prefix):
                name = unquote(path[len(prefix):])
                index = self._service_index.get(name, self._services_index)
                instances = self._instances(name, q)
                if prefix.startswith("/v1/catalog"):
                    return index, [self._catalog_service_json(i) for i in instances]
                entries = []
                for inst in instances:
                    checks = self._checks(inst)
                    if q.passing and any(c["Status"] != PASSING for c in checks):
                        continue
                    entries.append({"Node": self._node_json(self.nodes[inst.node]),
                                    "Service": self._service_json(inst), "Checks": checks})
                return index, entries
        raise LookupError(path)

    def agent_self(self) -> dict[str, Any]:
        node = self.server_node
        return {
            "Config": {"Datacenter": self.datacenter, "PrimaryDatacenter": self.datacenter,
                       "NodeName": node.name, "NodeID": node.id, "Revision": "a0f7f9d5",
                       "Server": True, "Version": "1.13.3", "BuildDate": "2022-10-19T16:02:53Z"},
            "DebugConfig": {}, "Coord": {"Vec": [0] * 8, "Error": 1.5, "Adjustment": 0,
                                         "Height": 1e-5},
            "Member": {"Name": node.name, "Addr": node.address, "Port": 8301,
                       "Tags": {"dc": self.datacenter, "role": "consul", "build": "1.13.3"},
                       "Status": 1},
            "Stats": {}, "Meta": dict(node.meta),
            "xDS": {"SupportedProxies": {}, "Port": -1},
        }


@dataclass
class _Query:
    dc: str = ""
    tags: tuple[str, ...] = ()
    node_meta: tuple[tuple[str, str], ...] = ()
    namespace: str = ""
    partition: str = ""
    passing: bool = False
    stale: bool = False
    index: int = 0
    wait: float = DEFAULT_WAIT
    token: str | None = None

    def _replace_tags(self) -> _Query:
        # /v1/catalog/services has no tag filter.
        return _Query(self.dc, (), self.node_meta, self.namespace, self.partition)


class QueryError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_query(query: str) -> _Query:
    params = parse_qs(query, keep_blank_values=True)
    q = _Query()
    q.dc = params.get("dc", [""])[-1]
    q.tags = tuple(params.get("tag", []))
    for pair in params.get("node-meta", []):
        key, sep, value = pair.partition(":")
        if not sep:
            raise QueryError(400, f"Error parsing node-meta: {pair!r}: missing ':'")
        q.node_meta += ((key, value),)
    q.namespace = params.get("ns", [""])[-1]
    q.partition = params.get("partition", [""])[-1]
    q.passing = params.get("passing", ["false"])[-1] in ("", "true", "1")
    q.stale = "stale" in params
    if q.stale and "consistent" in params:
        raise QueryError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
    if "filter" in params:
        raise QueryError(400, "the simulator does not implement ?filter expressions")
    if "index" in params:
        try:
            q.index = int(params["index"][-1])
        except ValueError:
            raise QueryError(400, "Invalid index") from None
    if "wait" in params:
        try:
            q.wait = min(parse_go_duration(params["wait"][-1]), MAX_WAIT)
        except ValueError:
            raise QueryError(400, "Invalid wait time") from None
    if "token" in params:
        q.token = params["token"][-1]
    return q


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        sim = self.server.sim
        split = urlsplit(self.path)
        path = split.path
        with sim._lock:
            sim.requests.append(self.path)
            sim.headers_seen.append(dict(self.headers.items()))
        try:
            self._check_basic_auth()
            q = _parse_query(split.query)
            token = self._token(q)
            with sim._lock:
                if sim.failing:
                    raise QueryError(*sim.failing)
            self._check_token(token)
            if q.dc and q.dc != sim.datacenter:
                raise QueryError(500, "No path to datacenter")
            if path == "/v1/agent/self":
                if sim.token is not None and token is None:
                    raise QueryError(403, "Permission denied: anonymous token lacks "
                                     "permission 'agent:read' on \"consul-server-1\"")
                with sim._lock:
                    body = sim.agent_self()
                self._send(200, json.dumps(body).encode(), {})
                return
            index, body = self._blocking(path, q)
        except QueryError as exc:
            self._send(exc.status, str(exc).encode(), {}, "text/plain; charset=utf-8")
            return
        filtered = sim.token is not None and token is None
        if filtered:
            body = {} if isinstance(body, dict) else []
        headers = {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true",
                   "X-Consul-LastContact": "0",
                   "X-Consul-Effective-Consistency": "stale" if q.stale else "leader"}
        if filtered:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        self._send(200, json.dumps(body).encode(), headers)

    def do_PUT(self) -> None:
        self._send(405, b"method not allowed by the simulator", {}, "text/plain")

    do_POST = do_DELETE = do_PUT

    def _blocking(self, path: str, q: _Query) -> tuple[int, Any]:
        sim = self.server.sim
        with sim._lock:
            try:
                key, index = sim.watched(path)
            except LookupError:
                raise QueryError(404, "Invalid URL path: not a recognized HTTP API endpoint"
                                 ) from None
            if q.index > 0 and index <= q.index:
                wait = q.wait + random.uniform(0, q.wait / 16)
                deadline = _monotonic() + wait
                while index <= q.index and not sim._closed and sim.failing is None:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        break
                    sim._cond_for(key).wait(remaining)
                    key, index = sim.watched(path)
                if sim.failing:
                    raise QueryError(*sim.failing)
            index, body = sim.answer(path, q)
            return max(index, 1), body

    def _token(self, q: _Query) -> str | None:
        token = self.headers.get("X-Consul-Token")
        auth = self.headers.get("Authorization", "")
        if token is None and auth.startswith("Bearer "):
            token = auth[len("Bearer "):].strip()
        if token is None:
            token = q.token
        return token or None

    def _check_token(self, token: str | None) -> None:
        sim = self.server.sim
        if sim.token is not None and token is not None and token != sim.token:
            raise QueryError(403, "ACL not found")

    def _check_basic_auth(self) -> None:
        import base64
        sim = self.server.sim
        if sim.basic_auth is None:
            return
        auth = self.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(":".join(sim.basic_auth).encode()).decode()
        if auth != expected:
            raise QueryError(401, "Unauthorized")

    def _send(self, status: int, body: bytes, headers: dict[str, str],
              content_type: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Vary", "Accept-Encoding")
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True


def _monotonic() -> float:
    import time
    return time.monotonic()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # hundreds of watchers connect at once

    def __init__(self, sim: ConsulSimulator, host: str) -> None:
        self.sim = sim
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.sim._ssl is not None:
            request.settimeout(10)
            try:
                request = self.sim._ssl.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
            request.settimeout(None)
        try:
            super().finish_request(request, client_address)
        finally:
            if request is not None and self.sim._ssl is not None:
                with contextlib.suppress(OSError):
                    request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-answer are normal for long polls
