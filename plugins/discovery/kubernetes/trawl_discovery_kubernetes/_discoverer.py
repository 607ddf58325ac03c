"""The Kubernetes discoverer: list then watch each resource, rebuild the changed groups."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import trawl
import trio

from . import _labels
from ._client import ApiClient, ApiError, ConfigurationError, Connection, Gone, connection
from ._config import KubernetesConfig

log = logging.getLogger("trawl.discovery.kubernetes")

# resource -> (API path prefix, namespaced)
API_PATHS = {
    "nodes": ("/api/v1", False),
    "pods": ("/api/v1", True),
    "services": ("/api/v1", True),
    "endpoints": ("/api/v1", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1", True),
    "ingresses": ("/apis/networking.k8s.io/v1", True),
}
# role -> (its resource, the resources its labels also read)
ROLE_RESOURCES = {
    "node": ("nodes", ()),
    "pod": ("pods", ()),
    "service": ("services", ()),
    "endpoints": ("endpoints", ("pods", "services")),
    "endpointslice": ("endpointslices", ("pods", "services")),
    "ingress": ("ingresses", ()),
}
MIN_BACKOFF = 0.5
MAX_PAGES = 100_000
DEBOUNCE = 0.05

Obj = dict[str, Any]
Key = tuple[str, str]


def _pick(obj: Any, keys: tuple[str, ...]) -> Any:
    if not isinstance(obj, dict):
        return obj
    return {k: obj[k] for k in keys if k in obj}


def _containers(items: Any) -> Any:
    if not isinstance(items, list):
        return items
    return [_pick(c, ("name", "image", "ports")) for c in items]


def slim(resource: str, obj: Obj) -> Obj:
    """Keep only what labels are made of, so thousands of objects stay small in memory:
    metadata without managed fields; for pods, only the fields pod labels read."""
    out = dict(obj)
    out["metadata"] = _pick(obj.get("metadata") or {}, (
        "name", "namespace", "uid", "labels", "annotations", "ownerReferences",
        "resourceVersion"))
    out.pop("kind", None)
    out.pop("apiVersion", None)
    if resource == "pods":
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        out["spec"] = {**_pick(spec, ("nodeName",)),
                       "containers": _containers(spec.get("containers")),
                       "initContainers": _containers(spec.get("initContainers"))}
        conditions = status.get("conditions")
        out["status"] = {
            **_pick(status, ("podIP", "hostIP", "phase")),
            "conditions": [c for c in conditions if isinstance(c, dict)
                           and c.get("type") == "Ready"][:1]
            if isinstance(conditions, list) else conditions,
            "containerStatuses": _containers_status(status.get("containerStatuses")),
            "initContainerStatuses": _containers_status(status.get("initContainerStatuses")),
        }
    return out


def _containers_status(items: Any) -> Any:
    if not isinstance(items, list):
        return items
    return [_pick(c, ("name", "containerID")) for c in items]


class Watcher:
    """Lists then watches one resource in one namespace (or all), into a shared store."""

    def __init__(self, discoverer: KubernetesDiscoverer, resource: str, namespace: str,
                 primary: bool) -> None:
        self.d = discoverer
        self.resource = resource
        self.namespace = namespace
        self.primary = primary
        prefix, namespaced = API_PATHS[resource]
        self.path = (f"{prefix}/namespaces/{namespace}/{resource}" if namespace and namespaced
                     else f"{prefix}/{resource}")
        config = discoverer.config
        self.params: dict[str, str] = {}
        if primary and config.label_selector:
            self.params["labelSelector"] = config.label_selector
        if primary and config.field_selector:
            self.params["fieldSelector"] = config.field_selector
        self.keys: set[Key] = set()
        self.resource_version = ""
        self.error = ""
        self.attempted = trio.Event()

    @property
    def store(self) -> dict[Key, Obj]:
        return self.d.stores[self.resource]

    def _changed(self, key: Key) -> None:
        self.d.mark_dirty(self.resource, key)

    async def list(self) -> None:
        """List every object, page by page (``limit``/``continue``) when ``list-limit``."""
        params = dict(self.params)
        if self.d.config.list_limit:
            params["limit"] = str(self.d.config.list_limit)
        fresh: dict[Key, Obj] = {}
        version = ""
        for _ in range(MAX_PAGES):
            body = await self.d.client.list(self.path, params)
            for item in body.get("items") or ():
                if isinstance(item, dict):
                    fresh[_labels.key_of(item)] = slim(self.resource, item)
            meta = body.get("metadata") or {}
            version = version or str(meta.get("resourceVersion", ""))
            if not meta.get("continue"):
                break
            params["continue"] = str(meta["continue"])
        else:
            raise ApiError(f"GET {self.d.client.server}{self.path}: more than {MAX_PAGES} "
                           "pages")
        for key in self.keys - fresh.keys():
            self.store.pop(key, None)
            self._changed(key)
        for key, obj in fresh.items():
            if self.store.get(key) != obj:
                self.store[key] = obj
                self._changed(key)
        self.keys = set(fresh)
        self.resource_version = version

    async def watch(self) -> int:
        """Follow one watch request; return how many events it brought."""
        count = 0
        timeout = max(1, int(self.d.config.watch_timeout * random.uniform(1.0, 1.2)))
        params = {**self.params, "resourceVersion": self.resource_version}
        async with self.d.client.watch(self.path, params, timeout) as events:
            self.d.watcher_ok(self)
            async for event in events:
                count += 1
                kind, obj = event.get("type"), event["object"]
                rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if kind in ("ADDED", "MODIFIED"):
                    key = _labels.key_of(obj)
                    self.store[key] = slim(self.resource, obj)
                    self.keys.add(key)
                    self._changed(key)
                elif kind == "DELETED":
                    key = _labels.key_of(obj)
                    self.store.pop(key, None)
                    self.keys.discard(key)
                    self._changed(key)
                elif kind == "BOOKMARK":
                    pass
                elif kind == "ERROR":
                    code = int(obj.get("code") or 0)
                    message = f"watch {self.path}: {obj.get('message', 'error')}"
                    if code == 410:
                        raise Gone(message, 410)
                    raise ApiError(message, code)
                else:
                    raise ApiError(f"watch {self.path}: unknown event type {kind!r}")
                if rv:
                    self.resource_version = rv
        return count

    async def run(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            try:
                if not self.resource_version:
                    await self.list()
                    self.d.watcher_ok(self)
                    self.attempted.set()
                started = trio.current_time()
                events = await self.watch()
                self.d.watcher_ok(self)
                backoff = MIN_BACKOFF
                if events == 0 and trio.current_time() - started < 1.0:
                    # A server that closes watches at once must not make us spin.
                    await trio.sleep(MIN_BACKOFF)
            except Gone as exc:
                if not self.resource_version:
                    # The list itself expired (its continue token): like any failure,
                    # retry after a backoff, so that this can never spin.
                    self.d.watcher_failed(self, str(exc))
                    self.attempted.set()
                    await trio.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, self.d.config.max_backoff)
                    continue
                log.info("%s: resource version %s expired, listing again", self.path,
                         self.resource_version)
                self.resource_version = ""
            except (httpx.HTTPError, ApiError, trio.TooSlowError, ConfigurationError,
                    OSError, ValueError) as exc:
                self.d.watcher_failed(self, _describe(exc, self.d.client.server, self.path))
                self.attempted.set()
                if isinstance(exc, httpx.TransportError | trio.TooSlowError) or (
                        isinstance(exc, ApiError) and exc.code >= 500):
                    self.d.client.failover()
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self.d.config.max_backoff)


def _describe(exc: BaseException, server: str, path: str) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"GET {server}{path}: timed out"
    if isinstance(exc, httpx.HTTPError) and not isinstance(exc, httpx.HTTPStatusError):
        return f"GET {server}{path}: {type(exc).__name__}: {exc or 'connection failed'}"
    return str(exc) or type(exc).__name__


class KubernetesDiscoverer(trawl.Discoverer):
    """Discovers one role's targets from the Kubernetes API (see the README)."""

    kind = "kubernetes"
    Config = KubernetesConfig
    config: KubernetesConfig

    def __init__(self, config: KubernetesConfig) -> None:
        super().__init__(config)
        self.role = config.role
        self.primary, self.secondary = ROLE_RESOURCES[self.role]
        self.stores: dict[str, dict[Key, Obj]] = {
            r: {} for r in (self.primary, *self.secondary)}
        self.dirty: set[tuple[str, Key]] = set()
        # endpoints (slice) key -> the (resource, key) of the pods and service it refers to
        self.references: dict[Key, set[tuple[str, Key]]] = {}
        self.referrers: dict[tuple[str, Key], set[Key]] = {}
        self._wake = trio.Event()
        self.sent: dict[str, trawl.TargetGroup] = {}
        self.watchers: list[Watcher] = []
        self.client: ApiClient
        self._started = False

    async def _connection(self, task_status: trio.TaskStatus[None]) -> Connection:
        """The connection settings; while they cannot be read (a service-account token
        not mounted yet, a missing kubeconfig), report it and try again with backoff."""
        backoff = MIN_BACKOFF
        while True:
            try:
                return await trio.to_thread.run_sync(connection, self.config)
            except ConfigurationError as exc:
                if not self.health.failing:
                    log.warning("discoverer %s failed: %s", self.name, exc)
                self.health.failed(str(exc))
            if not self._started:
                self._started = True
                task_status.started()
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.config.max_backoff)

    # --- bookkeeping called by watchers
    def mark_dirty(self, resource: str, key: Key) -> None:
        self.dirty.add((resource, key))
        self._wake.set()

    def watcher_ok(self, watcher: Watcher) -> None:
        if watcher.error:
            watcher.error = ""
            self._wake.set()  # publish, which reports the recovery

    def watcher_failed(self, watcher: Watcher, error: str) -> None:
        if not self.health.failing:
            log.warning("discoverer %s failed: %s (keeping the last good targets)",
                        self.name, error)
        watcher.error = error
        self.health.failed(error)
        self.health.targets = sum(len(g.targets) for g in self.sent.values())

    # --- building groups
    def _lookup(self, resource: str) -> Callable[[str, str], Obj | None]:
        store = self.stores.get(resource, {})
        return lambda ns, name: store.get((ns, name))

    def build(self, obj: Obj) -> trawl.TargetGroup:
        role = self.role
        if role == "pod":
            return _labels.pod_group(obj)
        if role == "service":
            return _labels.service_group(obj)
        if role == "node":
            return _labels.node_group(obj)
        if role == "ingress":
            return _labels.ingress_group(obj)
        pods, services = self._lookup("pods"), self._lookup("services")
        if role == "endpoints":
            return _labels.endpoints_group(obj, pods, services)
        return _labels.endpointslice_group(obj, pods, services)

    def _source(self, key: Key) -> str:
        ns, name = key
        prefix = {"pod": "pod", "service": "svc", "node": "node", "ingress": "ingress",
                  "endpoints": "endpoints", "endpointslice": "endpointslice"}[self.role]
        return f"node/{name}" if self.role == "node" else f"{prefix}/{ns}/{name}"

    def _index(self, key: Key, obj: Obj | None) -> None:
        """Remember which pods and service an endpoints object (or slice) refers to."""
        if not self.secondary:
            return
        for ref in self.references.pop(key, ()):
            self.referrers[ref].discard(key)
            if not self.referrers[ref]:
                del self.referrers[ref]
        if obj is None:
            return
        refs = _labels.references(obj, self.role)
        self.references[key] = refs
        for ref in refs:
            self.referrers.setdefault(ref, set()).add(key)

    def changed_groups(self) -> list[trawl.TargetGroup]:
        """Rebuild the groups the dirty keys touch; return those that differ from sent."""
        dirty, self.dirty = self.dirty, set()
        store = self.stores[self.primary]
        keys: set[Key] = set()
        for resource, key in dirty:
            if resource == self.primary:
                keys.add(key)
            else:
                # A pod or service changed: rebuild the endpoints (slices) that refer to it.
                keys.update(self.referrers.get((resource, key), ()))
        out = []
        for key in keys:
            obj = store.get(key)
            try:
                self._index(key, obj)
                group = (self.build(obj) if obj is not None
                         else trawl.TargetGroup(self._source(key)))
            except (TypeError, AttributeError, ValueError) as exc:
                # An object of an unexpected shape: skip it, say which, go on with the rest.
                log.warning("discoverer %s: cannot read %s %s/%s: %s", self.name,
                            self.primary, key[0], key[1], exc)
                group = trawl.TargetGroup(self._source(key))
            if not group.targets:
                if self.sent.pop(group.source, None) is not None:
                    out.append(trawl.TargetGroup(group.source))
            elif self.sent.get(group.source) != group:
                self.sent[group.source] = group
                out.append(group)
        return out

    async def _publish(self, groups: trawl.GroupSender) -> None:
        changed = self.changed_groups()
        if not any(w.error for w in self.watchers):  # health first, then the targets
            if self.health.failing:
                log.warning("discoverer %s recovered", self.name)
            self.health.succeeded(sum(len(g.targets) for g in self.sent.values()))
        if changed:
            await groups.send(changed)

    async def run(
        self, groups: trawl.GroupSender, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        conn = await self._connection(task_status)
        self.client = ApiClient(conn, self.config.request_timeout)
        namespaces = self.config.all_namespaces or [""]
        for resource in (self.primary, *self.secondary):
            for ns in namespaces if API_PATHS[resource][1] else [""]:
                self.watchers.append(Watcher(self, resource, ns, resource == self.primary))
        try:
            async with trio.open_nursery() as nursery:
                for w in self.watchers:
                    nursery.start_soon(w.run)
                for w in self.watchers:
                    await w.attempted.wait()
                await self._publish(groups)
                if not self._started:
                    task_status.started()
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    await trio.sleep(DEBOUNCE)  # gather a burst of events into one send
                    await self._publish(groups)
        finally:
            with trio.CancelScope(shield=True):
                await self.client.aclose()
