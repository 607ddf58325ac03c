"""The ``trawl`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import resources
from typing import Any

import trio

from . import __version__
from ._config import Config, load_config, parse_config
from ._discovery import DiscoveredTarget, DiscoveryManager
from ._errors import ConfigError, PluginError, TrawlError
from ._host import Host
from ._parsing import ParseError, format_value
from ._plugins import Registry, collect, get_plugin_manager, list_plugins

DEFAULT_CONFIG = "<embedded default>"


def main(argv: list[str] | None = None) -> int:
    parser = _argparser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        pm = get_plugin_manager()
        registry = collect(pm)
        if args.command == "plugins":
            return _plugins(pm, registry, args.json)
        if args.command == "check":
            return _check(args.config, registry)
        if args.command == "parse":
            return _parse(args.path, args.content_type, registry)
        config = _load(args.config, registry)
        for notice in config.notices:
            logging.getLogger("trawl.config").info("%s", notice)
        if args.command == "discover":
            trio.run(_discover, config, args.once)
            return 0
        if args.command == "run":
            trio.run(_run, config, registry)
            return 0
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except (PluginError, TrawlError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    parser.print_help()
    return 2


def _argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trawl", description="Discover targets, scrape them, "
                                "write the samples to InfluxDB (or elsewhere).")
    p.add_argument("--version", action="version", version=f"trawl {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("plugins", help="list installed plugins and what they register")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sc = sub.add_parser("check", help="validate a configuration file")
    sc.add_argument("config")
    sd = sub.add_parser("discover", help="print discovered targets as JSON lines")
    sd.add_argument("-c", "--config", required=True)
    sd.add_argument("--once", action="store_true", help="print the first snapshot and exit")
    sr = sub.add_parser("run", help="discover, scrape and write")
    sr.add_argument("-c", "--config", default=None,
                    help="configuration file (default: the embedded default)")
    spa = sub.add_parser("parse", help="parse an exposition file and print its samples as "
                         "JSON arrays [name, {labels}, value, timestamp_ms]")
    spa.add_argument("path", help="file to parse, or - for standard input")
    spa.add_argument("--content-type", default="text/plain; version=0.0.4",
                     help="the Content-Type it was served with (default: %(default)s); "
                     "application/openmetrics-text selects OpenMetrics")
    return p


def _load(path: str | None, registry: Registry) -> Config:
    if path is None:
        import tomllib

        text = resources.files("trawl").joinpath("_default.toml").read_text()
        return parse_config(tomllib.loads(text), registry, DEFAULT_CONFIG)
    return load_config(path, registry)


def _plugins(pm: Any, registry: Registry, as_json: bool) -> int:
    plugins = list_plugins(pm, registry)
    if as_json:
        print(json.dumps(plugins, indent=2))
        return 0
    width = max((len(p["distribution"] or p["name"]) for p in plugins), default=10)
    for p in plugins:
        dist = p["distribution"] or p["name"]
        kinds = ", ".join(p["kinds"]) or "-"
        if "error" in p:
            kinds = f"cannot be loaded: {p['error']}"
        print(f"{dist:<{width}}  {p['version']:<8}  {kinds}")
    return 0


def _check(path: str, registry: Registry) -> int:
    try:
        config = load_config(path, registry)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    for notice in config.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(config.summary())
    return 0


def _parse(path: str, content_type: str, registry: Registry) -> int:
    """Print one JSON array per sample: ``[name, {labels}, value, timestamp_ms or null]``.

    The parser is chosen by ``content_type`` as a scrape chooses it (the text format when no
    parser claims it). Every series is checked, and the first problem is reported with its
    line number, as Prometheus would reject the scrape.
    """
    if path == "-":
        body = sys.stdin.buffer.read()
    else:
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError as exc:
            print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return 1
    cls = registry.parser_for(content_type) or registry.parsers["prometheus-text"]
    try:
        samples = cls().parse_all(body)
    except ParseError as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("".join(
        json.dumps([name, labels, _value_string(value), ts], ensure_ascii=False) + "\n"
        for name, labels, value, ts in samples))
    return 0


def _value_string(value: float) -> str:
    """A value as Prometheus's HTTP API prints it: ``"1"``, ``"2.5"``, ``"1e-07"``, ``"-0"``,
    ``"NaN"``, ``"+Inf"``, ``"-Inf"`` (see `trawl._parsing.format_value`)."""
    return format_value(value)


def _target_line(t: DiscoveredTarget, **extra: Any) -> str:
    return json.dumps({"discoverer": t.discoverer, "source": t.source,
                       "labels": dict(sorted(t.labels.items())), **extra})


async def _discover(config: Config, once: bool) -> None:
    discovery = DiscoveryManager([cls(c) for cls, c in config.enabled_discoverers()])
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        seen = discovery.version
        known: dict[str, set[str]] = {}
        for name in discovery.discoverers:
            lines = [_target_line(t) for t in discovery.snapshot(name)]
            known[name] = set(lines)
            for line in lines:
                print(line, flush=True)
        for name, d in discovery.discoverers.items():
            if d.health.failing:
                print(f"warning: {name}: {d.health.last_error}", file=sys.stderr)
        if once:
            nursery.cancel_scope.cancel()
            return
        while True:
            seen = await discovery.wait_changed(seen)
            for name in discovery.discoverers:
                now = {_target_line(t): t for t in discovery.snapshot(name)}
                for line in sorted(known[name] - now.keys()):
                    print(line[:-1] + ', "event": "removed"}', flush=True)
                for line in sorted(now.keys() - known[name]):
                    print(line[:-1] + ', "event": "added"}', flush=True)
                known[name] = set(now)


async def _run(config: Config, registry: Registry) -> None:
    host = Host(config, registry)
    log = logging.getLogger("trawl")
    log.info("%s", config.summary())
    await host.run()
    log.info("stopped")
