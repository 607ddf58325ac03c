from __future__ import annotations

import json
import logging
import random
import re
import ssl
import sys
from types import TracebackType
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
import trawl
import trio
from pydantic import Field, SecretStr, field_validator, model_validator

log = logging.getLogger("trawl.discovery.consul")

WAIT = 120.0
"""Seconds a blocking query may wait on the server (Prometheus's ``watchTimeout``)."""
CONNECT_TIMEOUT = 10.0
CATALOG = "/v1/catalog/services"
FIRST_QUERIES = 32
"""How many non-blocking first queries (one per service) may run at once."""
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


class ConsulConfig(trawl.DiscovererConfig):
    """``[[consul]]``: Kapacitor's keys, plus Prometheus's filters and Enterprise scopes."""

    address: str = "127.0.0.1:8500"
    token: SecretStr = SecretStr("")
    datacenter: str = ""
    tag_separator: str = ","
    scheme: Literal["http", "https"] = "http"
    username: str = ""
    password: SecretStr = SecretStr("")
    services: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    node_meta: dict[str, str] = Field(default_factory=dict)
    allow_stale: bool = True
    refresh_interval: trawl.Duration = 1.0
    namespace: str = ""
    partition: str = ""
    ssl_ca: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""
    ssl_server_name: str = ""
    insecure_skip_verify: bool = False

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        rest = address
        if "://" in address:
            scheme, _, rest = address.partition("://")
            if scheme not in ("http", "https"):
                raise ValueError(f"{address!r}: the scheme must be http or https")
        if not rest or "/" in rest or any(c.isspace() for c in rest):
            raise ValueError(f"{address!r} is not a host:port address")
        return address

    @field_validator("refresh_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 0:
            raise ValueError("refresh-interval must not be negative")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> ConsulConfig:
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("ssl-cert and ssl-key must be given together")
        return self

    @property
    def base_url(self) -> str:
        if "://" in self.address:
            return self.address.rstrip("/")
        return f"{self.scheme}://{self.address}"


class ConsulError(Exception):
    """A Consul API call that failed: unreachable, an error status, or an unexpected answer."""


def sanitize_label_name(name: str) -> str:
    """Replace what a label name may not contain with ``_``, as Prometheus does."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def aggregated_status(checks: list[Any]) -> str:
    """The health of an instance from its checks, as Consul's ``AggregatedStatus`` says."""
    warning = critical = maintenance = False
    for check in checks:
        if not isinstance(check, dict):
            raise ConsulError(f"unexpected check {check!r}")
        check_id = check.get("CheckID") or ""
        if check_id == "_node_maintenance" or check_id.startswith("_service_maintenance:"):
            maintenance = True
            continue
        status = check.get("Status")
        if status == "passing":
            pass
        elif status == "warning":
            warning = True
        elif status == "critical":
            critical = True
        else:
            return ""
    if maintenance:
        return "maintenance"
    if critical:
        return "critical"
    if warning:
        return "warning"
    return "passing"  # every check passing, or no checks at all


def _mapping(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConsulError(f"{what} is not an object of strings")
    return value


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConsulError(f"{key} is not a string: {value!r}")
    return value


def target_labels(entry: Any, tag_separator: str) -> dict[str, str]:
    """The labels of one ``/v1/health/service`` entry, as Prometheus makes them."""
    if not isinstance(entry, dict):
        raise ConsulError(f"unexpected service entry {entry!r}")
    node = entry.get("Node") or {}
    service = entry.get("Service") or {}
    checks = entry.get("Checks") or []
    if not isinstance(node, dict) or not isinstance(service, dict) or not isinstance(checks,
                                                                                      list):
        raise ConsulError("a service entry's Node, Service or Checks has the wrong type")
    port = service.get("Port") or 0
    tags = service.get("Tags") or []
    if not isinstance(port, int) or not isinstance(tags, list) or not all(
            isinstance(t, str) for t in tags):
        raise ConsulError("a service's Port or Tags has the wrong type")
    node_address = _text(node, "Address")
    service_address = _text(service, "Address")
    labels = {
        "__address__": join_host_port(service_address or node_address, port),
        "__meta_consul_address": node_address,
        "__meta_consul_node": _text(node, "Node"),
        "__meta_consul_namespace": _text(service, "Namespace"),
        "__meta_consul_partition": _text(service, "Partition"),
        # Surrounded by the separator, so relabel regexes need not care where a tag is.
        "__meta_consul_tags": tag_separator + tag_separator.join(tags) + tag_separator,
        "__meta_consul_service_address": service_address,
        "__meta_consul_service_port": str(port),
        "__meta_consul_service_id": _text(service, "ID"),
        "__meta_consul_health": aggregated_status(checks),
    }
    # Label names are interned: thousands of targets share a few of them.
    for key, value in _mapping(node.get("Meta"), "Node.Meta").items():
        labels[sys.intern("__meta_consul_metadata_" + sanitize_label_name(key))] = value
    for key, value in _mapping(service.get("Meta"), "Service.Meta").items():
        labels[sys.intern("__meta_consul_service_metadata_" + sanitize_label_name(key))] = value
    tagged = _mapping(node.get("TaggedAddresses"), "Node.TaggedAddresses")
    for key, value in tagged.items():
        labels[sys.intern("__meta_consul_tagged_address_" + sanitize_label_name(key))] = value
    return labels


def next_index(old: int, new: int) -> int:
    """The index for the next blocking query, with the sanity checks Consul's docs ask for."""
    if new < old:
        return 0  # went backwards (e.g. a new leader's snapshot): start over
    return max(new, 1)


class Backoff:
    """Exponential backoff with jitter, from ``low`` up to ``high`` seconds."""

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self.current = low

    def reset(self) -> None:
        self.current = self.low

    async def sleep(self) -> None:
        await trio.sleep(self.current * random.uniform(0.8, 1.2))
        self.current = min(self.current * 2, self.high)


def tls_context(config: ConsulConfig) -> ssl.SSLContext | None:
    """The client TLS context the ``ssl-*`` keys ask for (``None``: system defaults)."""
    if not (config.base_url.startswith("https:") or config.ssl_ca or config.ssl_cert
            or config.insecure_skip_verify):
        return None
    try:
        ctx = trawl.tls_context(ca=config.ssl_ca, cert=config.ssl_cert, key=config.ssl_key,
                                insecure=config.insecure_skip_verify)
    except (OSError, ssl.SSLError) as exc:
        raise trawl.ConfigError([f"[[consul]] {config.id or '(no id)'}: cannot load the "
                                 f"TLS files: {exc}"]) from None
    return ctx


class ConsulAPI:
    """How to reach Consul: the address, credentials and TLS context of one ``[[consul]]``.

    Every watcher opens its own `connection`: each watched service holds one connection
    for its blocking query, as Prometheus's do. (One shared httpx pool would do work in
    proportion to its open connections on every request, which with hundreds of long
    polls costs more than the discovery itself.)
    """

    def __init__(self, config: ConsulConfig, wait: float = WAIT) -> None:
        self.config = config
        self.wait = wait
        self.headers = {}
        token = config.token.get_secret_value()
        if token:
            self.headers["X-Consul-Token"] = token
        self.auth = None
        if config.username or config.password.get_secret_value():
            self.auth = httpx.BasicAuth(config.username, config.password.get_secret_value())
        # Built once and shared: httpx would load the CA bundle for every client.
        self.ssl_context = tls_context(config) or ssl.create_default_context()
        self.extensions = ({"sni_hostname": config.ssl_server_name}
                           if config.ssl_server_name else {})

    def connection(self) -> ConsulConnection:
        return ConsulConnection(self)

    def base_params(self) -> list[tuple[str, str]]:
        """``dc``, ``stale``, ``ns``, ``partition`` and ``node-meta``, as configured."""
        c = self.config
        params = []
        if c.datacenter:
            params.append(("dc", c.datacenter))
        if c.allow_stale:
            params.append(("stale", ""))
        if c.namespace:
            params.append(("ns", c.namespace))
        if c.partition:
            params.append(("partition", c.partition))
        params.extend(("node-meta", f"{k}:{v}") for k, v in sorted(c.node_meta.items()))
        return params


class ConsulConnection:
    """One keep-alive connection to Consul, for one watcher; an async context manager."""

    def __init__(self, api: ConsulAPI) -> None:
        self.api = api
        self.wait = api.wait
        self._client = httpx.AsyncClient(
            base_url=api.config.base_url,
            verify=api.ssl_context,
            auth=api.auth,
            headers=api.headers,
            trust_env=False,
            timeout=httpx.Timeout(CONNECT_TIMEOUT, read=api.wait * 17 / 16 + CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def __aenter__(self) -> ConsulConnection:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        with trio.CancelScope(shield=True):
            await self._client.aclose()

    async def get(self, path: str, params: list[tuple[str, str]] | None = None, *,
                  index: int | None = None) -> tuple[int, Any]:
        """GET a path; with ``index``, a blocking query. Returns (``X-Consul-Index``, JSON)."""
        query = list(params or ())
        timeout = CONNECT_TIMEOUT * 2
        if index is not None and index > 0:
            query += [("index", str(index)), ("wait", f"{int(self.wait * 1000)}ms")]
            # Consul adds up to wait/16 of jitter to the wait.
            timeout += self.wait * 17 / 16
        try:
            with trio.fail_after(timeout):
                response = await self._client.get(path, params=tuple(query),
                                                  extensions=self.api.extensions)
        except trio.TooSlowError:
            raise ConsulError(f"GET {path}: no answer within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            reason = trawl.error_reason(exc)
            raise ConsulError(f"GET {path}: {type(exc).__name__}: {reason}") from None
        if response.status_code != 200:
            text = response.text.strip()[:200]
            raise ConsulError(f"GET {path}: HTTP {response.status_code}: {text}")
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConsulError(f"GET {path}: the answer is not JSON") from None
        new_index = 0
        if index is not None:
            header = response.headers.get("X-Consul-Index")
            try:
                new_index = int(header or "")
            except ValueError:
                raise ConsulError(f"GET {path}: bad or missing X-Consul-Index {header!r}"
                                  ) from None
        return new_index, body

    async def datacenter(self) -> str:
        """The agent's own datacenter (``Config.Datacenter`` of ``/v1/agent/self``)."""
        _, body = await self.get("/v1/agent/self")
        dc = body.get("Config", {}).get("Datacenter") if isinstance(body, dict) else None
        if not isinstance(dc, str) or not dc:
            raise ConsulError(f"GET /v1/agent/self: invalid Config.Datacenter {dc!r}")
        return dc


class ConsulDiscoverer(trawl.Discoverer):
    """Watches Consul's catalog and each service with blocking queries.

    One watcher follows ``/v1/catalog/services`` and starts or stops one watcher per
    wanted service, which follows ``/v1/health/service/<name>``. Each group's source is
    the service name, as in Prometheus. A change reaches trawl as soon as Consul answers
    the blocking query; ``refresh-interval`` is only the least time between two queries of
    one watcher. A failing watcher keeps its last good targets, reports the error in the
    discoverer's health and retries with exponential backoff.
    """

    kind = "consul"
    Config = ConsulConfig
    config: ConsulConfig
    wait: ClassVar[float] = WAIT
    min_backoff: ClassVar[float] = 1.0
    max_backoff: ClassVar[float] = 30.0

    def __init__(self, config: ConsulConfig) -> None:
        super().__init__(config)
        self._failing: dict[str, str] = {}
        self._targets: dict[str, int] = {}
        self._watchers: dict[str, trio.CancelScope] = {}
        self._sent: dict[str, trawl.TargetGroup] = {}
        self._first_queries = trio.CapacityLimiter(FIRST_QUERIES)

    async def run(
        self, groups: trawl.GroupSender, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        api = ConsulAPI(self.config, self.wait)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch_catalog, api, groups)
            task_status.started()

    # ------------------------------------------------------------------ health
    # Health is the discoverer's, but every watcher fails and recovers on its own: the
    # discoverer is failing while any watcher is, and says so once, not once per service.
    def _failed(self, where: str, error: str) -> None:
        message = f"{where}: {error}"
        if not self._failing:
            log.warning("discoverer %s failed: %s (keeping the last good targets, retrying "
                        "with backoff)", self.name, message)
        elif where not in self._failing:
            log.debug("discoverer %s failed: %s", self.name, message)
        self._failing[where] = message
        self.health.failed(message)

    def _succeeded(self, where: str) -> None:
        if self._failing.pop(where, None) is not None and not self._failing:
            log.warning("discoverer %s recovered", self.name)
        total = sum(self._targets.values())
        if self._failing:
            self.health.targets = total
        else:
            self.health.succeeded(total)

    # ------------------------------------------------------------------ the catalog
    def wanted(self, services: Any) -> list[str]:
        """The services to watch, from ``/v1/catalog/services`` (name to tags)."""
        if not isinstance(services, dict):
            raise ConsulError("GET /v1/catalog/services: the answer is not an object")
        names = []
        for name, tags in services.items():
            if not isinstance(tags, list):
                raise ConsulError(f"GET /v1/catalog/services: tags of {name!r} not a list")
            if self.config.services and name not in self.config.services:
                continue
            if not all(t in tags for t in self.config.tags):
                continue
            names.append(name)
        return sorted(names)

    async def _watch_catalog(
        self, api: ConsulAPI, sender: trawl.GroupSender, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with api.connection() as conn:
            await self._follow_catalog(api, conn, sender, task_status)

    async def _follow_catalog(self, api: ConsulAPI, conn: ConsulConnection,
                              sender: trawl.GroupSender, task_status: trio.TaskStatus[None],
                              ) -> None:
        started = False
        backoff = Backoff(self.min_backoff, self.max_backoff)
        dc = self.config.datacenter
        while not dc:
            try:
                dc = await conn.datacenter()
            except ConsulError as exc:
                self._failed("datacenter", str(exc))
                if not started:
                    task_status.started()
                    started = True
                await backoff.sleep()
        self._succeeded("datacenter")
        backoff.reset()
        params = api.base_params()
        index = 0
        async with trio.open_nursery() as watchers:
            while True:
                began = trio.current_time()
                try:
                    new_index, body = await conn.get(CATALOG, params, index=index)
                    names = self.wanted(body)
                except ConsulError as exc:
                    self._failed("catalog", str(exc))
                    if not started:
                        task_status.started()
                        started = True
                    await backoff.sleep()
                    index = 0  # ask without blocking, to know at once that Consul is back
                    continue
                backoff.reset()
                if new_index != index or index == 0:
                    await self._reconcile(api, sender, dc, names, watchers)
                index = next_index(index, new_index)
                self._succeeded("catalog")
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep_until(began + self.config.refresh_interval)

    async def _reconcile(self, api: ConsulAPI, sender: trawl.GroupSender, dc: str,
                         names: list[str], watchers: trio.Nursery) -> None:
        """Stop the watchers of vanished services, start new ones (after their first query)."""
        wanted = set(names)
        for name in [n for n in self._watchers if n not in wanted]:
            self._watchers.pop(name).cancel()
            self._targets.pop(name, None)
            if self._failing.pop(name, None) is not None and not self._failing:
                self.health.failing = False
            if self._sent.pop(name, None) is not None:
                await sender.send([trawl.TargetGroup(name)])
        new = [n for n in names if n not in self._watchers]
        if not new:
            return
        async with trio.open_nursery() as starting:
            for name in new:
                scope = self._watchers[name] = trio.CancelScope()
                starting.start_soon(watchers.start, self._watch_service, api, sender, dc,
                                    name, scope)

    # ------------------------------------------------------------------ one service
    def service_group(self, name: str, dc: str, entries: Any) -> trawl.TargetGroup:
        if not isinstance(entries, list):
            raise ConsulError(f"GET /v1/health/service/{name}: the answer is not a list")
        targets = tuple(target_labels(e, self.config.tag_separator) for e in entries)
        return trawl.TargetGroup(
            name, targets, {"__meta_consul_service": name, "__meta_consul_dc": dc})

    async def _query(self, conn: ConsulConnection, path: str, params: list[tuple[str, str]],
                     index: int, dc: str, name: str) -> tuple[int, trawl.TargetGroup]:
        # The decoded answer is dropped here: 500 watchers holding theirs while they wait
        # would cost more memory than the targets.
        new_index, body = await conn.get(path, params, index=index)
        return new_index, self.service_group(name, dc, body)

    async def _watch_service(
        self, api: ConsulAPI, sender: trawl.GroupSender, dc: str, name: str,
        scope: trio.CancelScope, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        params = api.base_params() + [("tag", t) for t in self.config.tags]
        with scope:
            async with api.connection() as conn:
                await self._follow_service(conn, sender, dc, name, params, task_status)

    async def _follow_service(self, conn: ConsulConnection, sender: trawl.GroupSender, dc: str,
                              name: str, params: list[tuple[str, str]],
                              task_status: trio.TaskStatus[None]) -> None:
        path = "/v1/health/service/" + quote(name, safe="")
        backoff = Backoff(self.min_backoff, self.max_backoff)
        started = False
        index = 0
        while True:
            began = trio.current_time()
            try:
                if index == 0:
                    async with self._first_queries:
                        new_index, group = await self._query(conn, path, params, index, dc,
                                                             name)
                else:
                    new_index, group = await self._query(conn, path, params, index, dc, name)
            except ConsulError as exc:
                self._failed(name, str(exc))
                if not started:
                    task_status.started()
                    started = True
                await backoff.sleep()
                index = 0  # ask without blocking, to know at once that Consul is back
                continue
            backoff.reset()
            index = next_index(index, new_index)
            self._targets[name] = len(group.targets)
            self._succeeded(name)  # health first: whoever sees the targets sees it
            if self._sent.get(name) != group:
                self._sent[name] = group
                await sender.send([group])
            if not started:
                task_status.started()
                started = True
            await trio.sleep_until(began + self.config.refresh_interval)
