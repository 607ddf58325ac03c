"""The plugin manager: hookspecs, entry points, built-ins, and what each plugin registers."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._errors import PluginError

if TYPE_CHECKING:
    from ._discovery import Discoverer
    from ._parsing import Parser
    from ._processing import Processor
    from ._sinks import Sink

log = logging.getLogger("trawl.plugins")

ENTRY_POINT_GROUP = "trawl"
DEFAULT_PLUGINS = ("trawl.builtin.parsers", "trawl.builtin.processors")

KNOWN_SECTIONS: dict[str, str] = {
    "static-discovery": "trawl-discovery-static",
    "file-discovery": "trawl-discovery-file",
    "azure": "trawl-discovery-azure",
    "consul": "trawl-discovery-consul",
    "dns": "trawl-discovery-dns",
    "ec2": "trawl-discovery-ec2",
    "gce": "trawl-discovery-gce",
    "kubernetes": "trawl-discovery-kubernetes",
    "marathon": "trawl-discovery-marathon",
    "nerve": "trawl-discovery-nerve",
    "serverset": "trawl-discovery-serverset",
    "triton": "trawl-discovery-triton",
    "influxdb": "trawl-sink-influxdb",
    "file-sink": "trawl-sink-file",
}
"""Sections trawl knows, and the distribution that owns each."""

CATEGORIES = ("discoverers", "parsers", "processors", "sinks")


@dataclass
class Registry:
    """Every class the installed plugins registered, by category and kind."""

    discoverers: dict[str, type[Discoverer]] = field(default_factory=dict)
    parsers: dict[str, type[Parser]] = field(default_factory=dict)
    processors: dict[str, type[Processor]] = field(default_factory=dict)
    sinks: dict[str, type[Sink]] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def kinds_of(self, plugin_name: str) -> list[str]:
        return [kind for (_, kind), owner in self.owners.items() if owner == plugin_name]

    def parser_for(self, content_type: str) -> type[Parser] | None:
        """The parser for a ``Content-Type`` header value, ignoring its parameters."""
        media = content_type.split(";", 1)[0].strip().lower()
        for parser in self.parsers.values():
            if parser.accepts(content_type, media):
                return parser
        return None


def disabled_plugins(env: dict[str, str] | None = None) -> list[str]:
    """Entry-point names listed in ``TRAWL_DISABLE_PLUGINS`` (comma-separated)."""
    raw = (env if env is not None else os.environ).get("TRAWL_DISABLE_PLUGINS", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering each entry point's distribution and broken plugins."""

    def __init__(self) -> None:
        super().__init__("trawl")
        self.distributions: dict[str, tuple[str, str]] = {}
        self.broken: dict[str, str] = {}

    def load_trawl_entrypoints(self) -> None:
        """Load every ``trawl`` entry point; one that fails to import is logged and skipped."""
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if (ep.group != ENTRY_POINT_GROUP or self.get_plugin(ep.name) is not None
                        or self.is_blocked(ep.name)):
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:  # a broken plugin must not take the others down
                    self.broken[ep.name] = f"{type(exc).__name__}: {exc}"
                    log.error("plugin %s (%s) cannot be loaded: %s", ep.name,
                              dist.metadata["Name"], self.broken[ep.name])
                    continue
                self.register(plugin, name=ep.name)
                self.distributions[ep.name] = (dist.metadata["Name"], dist.version)


def get_plugin_manager(
    *, load_entrypoints: bool = True, plugins: Iterable[object] = ()
) -> PluginManager:
    """Build a fresh plugin manager.

    Args:
      load_entrypoints: Load installed plugins from the ``trawl`` entry-point group, less
        those named in ``TRAWL_DISABLE_PLUGINS``. Tests pass ``False`` and register what
        they need through ``plugins``.
      plugins: Extra plugin objects (modules or instances with hookimpls) to register.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for name in disabled_plugins():
        pm.set_blocked(name)
    if load_entrypoints:
        pm.load_trawl_entrypoints()
    for name in DEFAULT_PLUGINS:
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(name), name)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    if os.environ.get("TRAWL_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        pm.enable_tracing()
    return pm


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call every ``trawl_register_*`` hook and gather the classes by kind.

    Raises:
      PluginError: a kind is registered twice, or a class lacks ``kind`` or ``Config``.
    """
    registry = Registry()
    for category in CATEGORIES:
        hook = getattr(pm.hook, f"trawl_register_{category}")
        table: dict[str, Any] = getattr(registry, category)
        for impl in reversed(hook.get_hookimpls()):
            impl.function(register=_registrar(registry, category, table, impl.plugin_name))
    return registry


def _registrar(
    registry: Registry, category: str, table: dict[str, Any], plugin_name: str
) -> Callable[[type[Any]], None]:
    def register(cls: type[Any]) -> None:
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise PluginError(f"plugin {plugin_name!r}: {cls!r} has no 'kind' string")
        if category != "parsers" and getattr(cls, "Config", None) is None:
            raise PluginError(f"plugin {plugin_name!r}: {cls.__name__} has no 'Config' model")
        if kind in table:
            other = registry.owners[(category, kind)]
            raise PluginError(
                f"plugin {plugin_name!r} registers {category[:-1]} kind {kind!r}, "
                f"already registered by {other!r}"
            )
        table[kind] = cls
        registry.owners[(category, kind)] = plugin_name

    return register


def list_plugins(
    pm: pluggy.PluginManager, registry: Registry | None = None
) -> list[dict[str, Any]]:
    """What ``trawl plugins`` prints: per plugin its distribution, version and kinds."""
    registry = registry or collect(pm)
    dists = pm.distributions if isinstance(pm, PluginManager) else {}
    core_version = importlib.metadata.version("trawl")
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        if name in dists:
            distribution, version = dists[name]
        elif name in DEFAULT_PLUGINS:
            distribution, version = "trawl", core_version
        else:
            distribution, version = "", ""
        out.append({
            "name": name,
            "distribution": distribution,
            "version": version,
            "kinds": sorted(registry.kinds_of(name)),
        })
    for name, error in getattr(pm, "broken", {}).items():
        out.append({"name": name, "distribution": "", "version": "", "kinds": [],
                    "error": error})
    return sorted(out, key=lambda p: (p["distribution"] != "trawl", p["name"]))
