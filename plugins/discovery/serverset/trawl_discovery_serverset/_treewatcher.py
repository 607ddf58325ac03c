"""Watch ZooKeeper subtrees with kazoo from Trio: watches, never polling."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import trio
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType, KazooState, WatchedEvent
from kazoo.retry import KazooRetry

log = logging.getLogger("trawl.discovery.zookeeper")


class _QuietKazooLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """kazoo's own messages, demoted to DEBUG.

    kazoo logs every connection attempt: a warning each retry while ZooKeeper is down, an
    error with a traceback each time a server answers garbage. The discoverer reports a
    problem once, when it starts and when it ends. Only kazoo's "Unhandled exception"
    (its connection thread dying) keeps its level.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not str(msg).startswith("Unhandled"):
            level = min(level, logging.DEBUG)
        super().log(level, msg, *args, **kwargs)


_kazoo_log = _QuietKazooLog(logging.getLogger("trawl.discovery.zookeeper.kazoo"), {})

RECONNECT_DELAY = 0.1
"""First wait (seconds) before kazoo tries the servers again; it doubles after each round."""
RECONNECT_MAX_DELAY = 2.0
"""Longest wait between two rounds of connection attempts."""
RETRY_MIN_DELAY = 1.0
RETRY_MAX_DELAY = 30.0
"""Backoff between resyncs while connected but reading the tree fails (an ACL, a timeout)."""

Changes = dict[str, bytes | None]
"""Node path → its new data, or None for a node that is gone."""


def child_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent != "/" else f"/{name}"


def parent_path(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class TreeWatcher:
    """Keeps the data of every node under some ZooKeeper paths, as Prometheus's treecache.

    Each path in ``paths`` is watched with its whole subtree, the path's own node included.
    ``run`` connects with kazoo (in kazoo's threads; its blocking calls run in Trio worker
    threads and its callbacks re-enter Trio through the run's `trio.lowlevel.TrioToken`),
    reads the trees while arming a data and a child watch on every node, and then rereads
    only the nodes whose watches fire. After every reconnection it rereads everything,
    because kazoo drops its watches when the connection goes. While disconnected it keeps
    what it knew and kazoo retries with backoff; `problems` says what is wrong.

    A path that does not exist is watched for its creation.

    Args:
      servers: ``host:port`` strings (the port defaults to 2181).
      paths: Absolute node paths.
      timeout: The ZooKeeper session timeout in seconds; also the time allowed for the
        first connection and for each round of reads.
    """

    def __init__(self, servers: Sequence[str], paths: Sequence[str], timeout: float) -> None:
        self.servers = list(servers)
        self.roots = list(dict.fromkeys(paths))
        self.timeout = timeout
        self._roots = frozenset(self.roots)
        self._data: dict[str, bytes] = {}
        self._children: dict[str, set[str]] = {}
        self._missing: set[str] = set()
        self._dirty: set[str] = set()
        self._resync = True
        self._connected = False
        self._connection_problem = ""
        self._read_problem = ""
        self._retry_at = -math.inf
        self._backoff = RETRY_MIN_DELAY
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._watch = self._on_watch  # one object, so kazoo keeps one watcher per node

    @property
    def nodes(self) -> Mapping[str, bytes]:
        """Every node currently known under the paths, with its data."""
        return MappingProxyType(self._data)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def problems(self) -> list[str]:
        """Why the view may be stale or incomplete; empty when all is well."""
        out = [p for p in (self._connection_problem, self._read_problem) if p]
        out.extend(f"path {p} does not exist" for p in self.roots if p in self._missing)
        return out

    # ------------------------------------------------------------ kazoo's threads
    def _call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def _on_state(self, state: str) -> None:
        self._call_soon(self._state_changed, state)

    def _on_watch(self, event: WatchedEvent) -> None:
        # EventType.NONE is kazoo dropping every watch on disconnection: the state listener
        # handles that (a full resync once connected again).
        if event.type != EventType.NONE and event.path:
            self._call_soon(self._mark_dirty, event.path)

    # ------------------------------------------------------------ the Trio thread
    def _state_changed(self, state: str) -> None:
        servers = ",".join(self.servers)
        if state == KazooState.CONNECTED:
            if self._connection_problem:
                log.info("reconnected to ZooKeeper %s", servers)
            self._connected = True
            self._connection_problem = ""
            self._resync = True
            self._retry_at = -math.inf
        elif state == KazooState.SUSPENDED:
            self._connected = False
            self._connection_problem = f"lost the connection to ZooKeeper {servers}; reconnecting"
        else:
            self._connected = False
            self._connection_problem = f"the ZooKeeper session expired; reconnecting to {servers}"
        self._wake.set()

    def _mark_dirty(self, path: str) -> None:
        self._dirty.add(path)
        self._wake.set()

    async def run(self, on_update: Callable[[Changes], Awaitable[None]], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled, calling ``await on_update(changes)`` after every change.

        ``changes`` maps each node path that appeared, changed or vanished to its data (None
        when gone); it is empty when only the connection state changed. ``task_status`` is
        told once the first connection and read have finished or failed.
        """
        self._token = trio.lowlevel.current_trio_token()
        client = await trio.to_thread.run_sync(self._make_client)
        try:
            await trio.to_thread.run_sync(client.start_async)
            with trio.move_on_after(self.timeout):
                while not self._connected:
                    await self._wake.wait()
                    self._wake = trio.Event()
            if not self._connected:
                self._connection_problem = (
                    f"cannot connect to ZooKeeper {','.join(self.servers)} within "
                    f"{self.timeout:g}s; still trying")
            await self._round(client, on_update)
            task_status.started()
            while True:
                pending = self._connected and (self._resync or self._dirty)
                with trio.move_on_at(self._retry_at if pending else math.inf):
                    await self._wake.wait()
                await self._round(client, on_update)
        finally:
            self._token = None
            with trio.CancelScope(deadline=trio.current_time() + self.timeout + 5, shield=True):
                await trio.to_thread.run_sync(_close, client, abandon_on_cancel=True)

    def _make_client(self) -> KazooClient:
        retry = KazooRetry(max_tries=-1, delay=RECONNECT_DELAY, max_delay=RECONNECT_MAX_DELAY)
        client = KazooClient(hosts=",".join(self.servers), timeout=self.timeout,
                             connection_retry=retry, logger=_kazoo_log)
        client.add_listener(self._on_state)
        return client

    async def _round(self, client: KazooClient, on_update: Callable[[Changes], Awaitable[None]]
                     ) -> None:
        self._wake = trio.Event()  # whatever happens from here on wakes the next wait
        changes: Changes = {}
        now = trio.current_time()
        if self._connected and (self._resync or self._dirty) and now >= self._retry_at:
            full = self._resync
            start = set(self.roots) if full else self._dirty
            self._resync, self._dirty = False, set()
            try:
                await self._sync(client, start, full, changes)
            except Exception as exc:
                self._resync = True
                self._read_problem = f"reading from ZooKeeper failed: {_describe(exc)}"
                self._retry_at = now + self._backoff * random.uniform(0.8, 1.2)
                self._backoff = min(self._backoff * 2, RETRY_MAX_DELAY)
            else:
                self._read_problem = ""
                self._backoff = RETRY_MIN_DELAY
        await on_update(changes)

    async def _sync(self, client: KazooClient, start: set[str], full: bool,
                    changes: Changes) -> None:
        """Read ``start`` and, level by level, the children not known yet (all when full)."""
        seen: set[str] = set()
        level = sorted(p for p in start if p in self._roots or parent_path(p) in self._data)
        while level:
            results = await trio.to_thread.run_sync(self._read, client, level,
                                                    abandon_on_cancel=True)
            next_level: list[str] = []
            for path in level:
                result = results[path]
                if result is None:
                    self._remove(path, changes)
                    if path in self._roots:
                        self._missing.add(path)
                    continue
                data, children = result
                seen.add(path)
                self._missing.discard(path)
                if self._data.get(path) != data:
                    self._data[path] = data
                    changes[path] = data
                parent = parent_path(path)
                if path not in self._roots and parent in self._children:
                    self._children[parent].add(path.rsplit("/", 1)[1])
                for name in self._children.get(path, set()) - set(children):
                    self._remove(child_path(path, name), changes)
                self._children[path] = set(children)
                for name in children:
                    child = child_path(path, name)
                    if full or child not in self._data:
                        next_level.append(child)
            level = next_level
        if full:
            for path in [p for p in self._data if p not in seen]:
                self._remove(path, changes)

    def _remove(self, path: str, changes: Changes) -> None:
        """Forget a node and everything under it."""
        prefix = path if path.endswith("/") else path + "/"
        for p in [p for p in self._data if p == path or p.startswith(prefix)]:
            del self._data[p]
            changes[p] = None
        for p in [p for p in self._children if p == path or p.startswith(prefix)]:
            del self._children[p]
        if path != "/":
            siblings = self._children.get(parent_path(path))
            if siblings is not None:
                siblings.discard(path.rsplit("/", 1)[1])

    def _read(self, client: KazooClient, paths: list[str]
              ) -> dict[str, tuple[bytes, list[str]] | None]:
        """In a worker thread: each node's data and children, arming watches (pipelined).

        A node that does not exist reads as None; for a watched root an ``exists`` watch
        then fires when it is created.
        """
        deadline = time.monotonic() + self.timeout
        watch = self._watch
        requests = []
        for path in paths:
            exists = client.exists_async(path, watch=watch) if path in self._roots else None
            requests.append((path, exists, client.get_async(path, watch=watch),
                             client.get_children_async(path, watch=watch)))
        out: dict[str, tuple[bytes, list[str]] | None] = {}
        for path, exists, data_result, children_result in requests:
            try:
                if exists is not None:
                    exists.get(timeout=max(0.0, deadline - time.monotonic()))
                data, _stat = data_result.get(timeout=max(0.0, deadline - time.monotonic()))
                children = children_result.get(timeout=max(0.0, deadline - time.monotonic()))
            except NoNodeError:
                out[path] = None
            else:
                out[path] = (data or b"", sorted(children))
        return out


def _close(client: KazooClient) -> None:
    try:
        client.stop()
    finally:
        client.close()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
