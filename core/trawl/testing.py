"""Helpers for testing trawl plugins, used by trawl's own tests too.

- `MemorySink`: a sink that records every batch it is given.
- `StaticTestDiscoverer`: a discoverer whose targets a test sets and changes at will.
- `run_host`: run a host for a given configuration for a bounded (virtual) time.
- `exposition_target` / `ExpositionServer`: a local HTTP target serving an exposition,
  as a Trio task or in a thread (for tests that run ``trawl`` as a subprocess).
- `registered`: register a plugin object with a plugin manager for a ``with`` block.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, ClassVar

import pluggy
import trio

from . import hookimpl
from ._batch import Batch
from ._config import Config, parse_config
from ._discovery import Discoverer, GroupSender
from ._host import Host
from ._model import DiscovererConfig, SinkConfig
from ._plugins import Registry, collect, get_plugin_manager
from ._sinks import Sink
from ._targets import TargetGroup, group

__all__ = [
    "ExpositionServer",
    "MemorySink",
    "StaticTestDiscoverer",
    "TestPlugins",
    "exposition_target",
    "make_registry",
    "registered",
    "run_host",
]


class MemorySink(Sink):
    """Records every batch in ``batches`` (class-wide by sink name, so tests can read it)."""

    kind = "memory-sink"
    Config = SinkConfig
    default_flush_interval = 0.0
    written: ClassVar[dict[str, list[Batch]]] = {}

    async def open(self) -> None:
        self.written.setdefault(self.name, [])

    async def write(self, batch: Batch) -> None:
        self.written.setdefault(self.name, []).append(batch)

    @classmethod
    def lines(cls, name: str) -> list[str]:
        """Everything the named sink received, as line protocol."""
        return [line for b in cls.written.get(name, []) for line in b.iter_lines()]


class StaticTestDiscoverer(Discoverer):
    """Targets set by the test: ``StaticTestDiscoverer.set(id, [addresses], labels)``."""

    kind = "test-discovery"
    Config = DiscovererConfig
    _instances: ClassVar[dict[str, StaticTestDiscoverer]] = {}
    _initial: ClassVar[dict[str, TargetGroup]] = {}

    def __init__(self, config: DiscovererConfig) -> None:
        super().__init__(config)
        self._sender: GroupSender | None = None
        self._instances[config.id] = self

    @classmethod
    def preset(cls, id: str, addresses: Sequence[str], labels: Mapping[str, str] | None = None
               ) -> None:
        """Targets the discoverer with this id reports when it starts."""
        cls._initial[id] = group("test", [{"__address__": a} for a in addresses], labels)

    @classmethod
    async def set(cls, id: str, addresses: Sequence[str],
                  labels: Mapping[str, str] | None = None) -> None:
        """Replace the running discoverer's targets."""
        sender = cls._instances[id]._sender
        assert sender is not None, "the discoverer has not started"
        await sender.send([group("test", [{"__address__": a} for a in addresses], labels)])

    async def run(self, groups: GroupSender, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._sender = groups
        initial = self._initial.get(self.config.id)
        if initial is not None:
            await groups.send([initial])
        task_status.started()
        await trio.sleep_forever()


class TestPlugins:
    """A plugin object registering `MemorySink` and `StaticTestDiscoverer`."""

    __test__ = False

    @hookimpl
    def trawl_register_sinks(self, register: Callable[[type[Sink]], None]) -> None:
        register(MemorySink)

    @hookimpl
    def trawl_register_discoverers(self, register: Callable[[type[Discoverer]], None]) -> None:
        register(StaticTestDiscoverer)


def make_registry(*plugins: object, load_entrypoints: bool = True) -> Registry:
    """A registry with the installed plugins (optionally), the test plugins and ``plugins``."""
    pm = get_plugin_manager(load_entrypoints=load_entrypoints,
                            plugins=(TestPlugins(), *plugins))
    return collect(pm)



@contextmanager
def registered(pm: pluggy.PluginManager, plugin: object, name: str | None = None
               ) -> Iterator[object]:
    """Register ``plugin`` with ``pm`` for the duration of the block."""
    pm.register(plugin, name)
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


async def run_host(config: Mapping[str, Any] | Config, seconds: float, *,
                   registry: Registry | None = None) -> Host:
    """Run a host for ``seconds`` (virtual seconds under ``autojump_clock``), then stop it.

    Sinks are flushed as on SIGTERM. Returns the host, to inspect its pools and sinks.
    """
    registry = registry or make_registry()
    if not isinstance(config, Config):
        config = parse_config(config, registry, "<test>")
    host = Host(config, registry)
    with trio.move_on_after(seconds):
        await host.run(handle_signals=False)
    return host


@asynccontextmanager
async def exposition_target(
    body: str | bytes | Callable[[], str | bytes], *,
    content_type: str = "text/plain; version=0.0.4", status: int = 200,
) -> AsyncIterator[str]:
    """Serve ``body`` at every path on a free loopback port; yields ``host:port``.

    ``body`` may be a callable, called per request. Runs as Trio tasks, so it works under
    ``autojump_clock``.
    """
    async def handle(stream: trio.SocketStream) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            payload = body() if callable(body) else body
            raw = payload.encode() if isinstance(payload, str) else payload
            head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n").encode()
            await stream.send_all(head + raw)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


class ExpositionServer:
    """A threaded HTTP target on a free loopback port, for tests of ``trawl`` subprocesses.

    ``server.body`` can be changed while it runs; ``server.requests`` counts scrapes.
    """

    def __init__(self, body: str | bytes, *, content_type: str = "text/plain; version=0.0.4",
                 host: str = "127.0.0.1") -> None:
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.requests = 0
        self.request_times: list[float] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                import time

                outer.requests += 1
                outer.request_times.append(time.time())
                self.send_response(200)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ExpositionServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
