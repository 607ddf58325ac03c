"""Helpers for testing trawl plugins; trawl's own tests use them too.

A plugin's tests typically run the host with a small configuration in which the plugin
under test meets these stand-ins:

- `MemorySink` (section ``[[memory-sink]]``): a sink that records every batch it is given.
- `StaticTestDiscoverer` (section ``[[test-discovery]]``): a discoverer whose targets come
  from its ``targets`` key, or are set and changed by the test while the host runs.
- `run_host`: run a host for a configuration (a dict, TOML text or a `trawl.Config`) for a
  bounded time, under Trio; virtual time when the test uses a mock clock.
- `exposition_target` / `ExpositionServer`: a local HTTP target serving a given exposition,
  as a Trio task, or in a thread (for tests that run ``trawl`` as a subprocess).
- `loopback_clock`: virtual time that stays correct when real loopback sockets are used.
- `make_registry` / `registered`: plugin registries and managers for tests.

The stand-ins are registered by `TestPlugins`, which `make_registry` (and so `run_host`)
adds to the installed plugins: they are not installed through an entry point, so they never
appear in ``trawl plugins`` or in a production configuration.

Example, a sink plugin's test (``[[acme-sink]]`` is the plugin under test; it is found
through its entry point once installed, ``pip install -e .``)::

    async def test_sink_receives_scrapes(tmp_path):
        async with exposition_target("up_total 1\\n") as address:
            await run_host(f'''
                [[test-discovery]]
                  id = "t"
                  targets = ["{address}"]
                [[scraper]]
                  name = "job"
                  db = "db"
                  rp = "autogen"
                  discoverer-service = "test-discovery"
                  discoverer-id = "t"
                  scrape-interval = "1s"
                  scrape-timeout = "1s"
                [[acme-sink]]
                  name = "out"
                  default = true
                  directory = "{tmp_path}"
            ''', seconds=2.5)
"""

from __future__ import annotations

import http.server
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, ClassVar

import pluggy
import trio
import trio.testing
from pydantic import Field

from . import hookimpl
from ._batch import Batch, Point
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
    "StaticTestConfig",
    "StaticTestDiscoverer",
    "TestPlugins",
    "exposition_target",
    "loopback_clock",
    "make_registry",
    "registered",
    "run_host",
]


class MemorySink(Sink):
    """``[[memory-sink]]``: records every batch, class-wide by sink name.

    A test reads what the sink named ``"mem"`` received with ``MemorySink.lines("mem")``
    (line protocol), ``MemorySink.points("mem")`` or ``MemorySink.written["mem"]`` (the
    batches), and forgets everything with ``MemorySink.clear()``. Batches are handed over
    as soon as they are scraped (no flush interval).
    """

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

    @classmethod
    def points(cls, name: str) -> list[Point]:
        """Every ``(series, value, timestamp_ms)`` the named sink received."""
        return [p for b in cls.written.get(name, []) for p in b.points]

    @classmethod
    def clear(cls) -> None:
        """Forget every batch of every memory sink."""
        cls.written.clear()


class StaticTestConfig(DiscovererConfig):
    """``[[test-discovery]]``: ``enabled``, ``id``, and optionally ``targets`` and ``labels``."""

    targets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class StaticTestDiscoverer(Discoverer):
    """``[[test-discovery]]``: targets from the configuration or set by the test.

    On start it sends the targets given with `preset` for its ``id``, else those of its
    ``targets`` key, as one group with source ``"test"``. While it runs, ``await
    StaticTestDiscoverer.set(id, addresses)`` replaces them. `reset` forgets presets.
    """

    kind = "test-discovery"
    Config = StaticTestConfig
    config: StaticTestConfig
    _instances: ClassVar[dict[str, StaticTestDiscoverer]] = {}
    _initial: ClassVar[dict[str, TargetGroup]] = {}

    def __init__(self, config: StaticTestConfig) -> None:
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

    @classmethod
    def reset(cls) -> None:
        """Forget presets and running instances."""
        cls._initial.clear()
        cls._instances.clear()

    async def run(self, groups: GroupSender, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._sender = groups
        initial = self._initial.get(self.config.id)
        if initial is None and self.config.targets:
            initial = group("test", [{"__address__": a} for a in self.config.targets],
                            self.config.labels)
        if initial is not None:
            await groups.send([initial])
            self.health.succeeded(len(initial.targets))
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
    """A registry of the installed plugins, the test plugins (`TestPlugins`) and ``plugins``.

    Args:
      plugins: Plugin objects to add, such as a plugin module that is not installed (an
        installed one is already found through its entry point: adding it again is an
        error).
      load_entrypoints: ``False`` leaves the installed plugins out.
    """
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


async def run_host(config: Mapping[str, Any] | str | Config, seconds: float, *,
                   registry: Registry | None = None) -> Host:
    """Run a host for ``seconds``, then stop it as on SIGTERM (sinks flush what they hold).

    Args:
      config: The configuration: parsed TOML (a dict), TOML text, or a validated
        `trawl.Config`. It may use ``[[test-discovery]]`` and ``[[memory-sink]]``.
      seconds: How long to run; virtual seconds when the test runs under a mock clock
        (``autojump_clock``, `loopback_clock`).
      registry: The plugins to use; by default `make_registry()`: the installed plugins
        and the test plugins.

    Returns:
      The stopped host, to inspect its pools (``host.pools``), sinks (``host.sinks``,
      with their ``stats``) and discoverers (``host.discovery``).

    Raises:
      trawl.ConfigError: the configuration is invalid (every problem is listed).
    """
    registry = registry or make_registry()
    if isinstance(config, str):
        config = parse_config(tomllib.loads(config), registry, "<test>")
    elif not isinstance(config, Config):
        config = parse_config(config, registry, "<test>")
    host = Host(config, registry)
    with trio.move_on_after(seconds):
        await host.run(handle_signals=False)
    return host


def loopback_clock() -> trio.testing.MockClock:
    """Virtual time for tests whose tasks talk over real loopback sockets.

    ``autojump_clock`` jumps as soon as every task waits, which can overtake a reply the
    kernel has not handed over yet on a busy machine. This clock jumps only after 20 ms of
    real idleness. Use it as a fixture::

        @pytest.fixture
        def clock():
            return trawl.testing.loopback_clock()

        async def test_something(clock): ...
    """
    return trio.testing.MockClock(autojump_threshold=0.02)


@asynccontextmanager
async def exposition_target(
    body: str | bytes | Callable[[], str | bytes], *,
    content_type: str = "text/plain; version=0.0.4", status: int = 200,
) -> AsyncIterator[str]:
    """Serve ``body`` at every path on a free loopback port; yields ``host:port``.

    ``body`` may be a callable, called per request. Runs as Trio tasks, so it works in
    virtual time (prefer `loopback_clock` to ``autojump_clock`` with real sockets).
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

    Use it as a context manager; ``server.address`` is ``host:port``. ``server.body`` can
    be changed while it runs; ``server.requests`` counts scrapes.
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
