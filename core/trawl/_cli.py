"""The ``trawl`` command line."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from importlib import resources
from typing import Any

import trio

from . import __version__, _logging
from ._config import Config, load_config, parse_config
from ._discovery import DiscoveredTarget, DiscoveryManager
from ._errors import ConfigError, PluginError, TrawlError
from ._host import Host
from ._parsing import ParseError, format_value
from ._plugins import Registry, collect, get_plugin_manager, list_plugins
from ._status import run_status

DEFAULT_CONFIG = "<embedded default>"
DEFAULT_URL = "http://127.0.0.1:9273"


def main(argv: list[str] | None = None) -> int:
    parser = _argparser()
    args = parser.parse_args(argv)
    logs = _logging.setup(args.log_level, args.log_format)
    try:
        return _main(parser, args, logs)
    finally:
        logs.restore()


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace,
          logs: _logging.Logging) -> int:
    if args.command == "targets":
        return _targets(args)
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
        secrets = _logging.config_secrets(config)
        logs.masker.add(secrets)
        logging.getLogger("trawl.config").debug(
            "%s: %d secret value(s) are masked in logs", config.path, len(secrets))
        for notice in config.notices:
            logging.getLogger("trawl.config").info("%s", notice)
        if args.command == "discover":
            trio.run(_discover, config, args.once)
            return 0
        if args.command == "run":
            trio.run(_run, config, registry, partial(_load, args.config, registry), logs)
            return 0
    except ConfigError as exc:
        for problem in exc.problems:
            _error(args, problem)
        return 1
    except (PluginError, TrawlError) as exc:
        _error(args, str(exc))
        return 1
    except BaseExceptionGroup as group:
        # trawl's own errors raised inside the host's nurseries (a sink that refuses its
        # configuration at open, say) are reported as such; anything else is a bug.
        mine, rest = group.split((PluginError, TrawlError))
        if rest is not None or mine is None:
            raise
        for leaf in _leaves(mine):
            _error(args, str(leaf))
        return 1
    except KeyboardInterrupt:
        return 0
    parser.print_help()
    return 2


def _error(args: argparse.Namespace, message: str) -> None:
    """``error: message`` on standard error; a log event with ``--log-format json``, so that
    a log collector reading trawl's standard error gets only JSON lines."""
    if args.log_format == "json":
        logging.getLogger("trawl").error("%s", message)
    else:
        print(f"error: {message}", file=sys.stderr)


def _argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trawl", description="Discover targets, scrape them, "
                                "write the samples to InfluxDB (or elsewhere).")
    p.add_argument("--version", action="version", version=f"trawl {__version__}")
    levels = ["debug", "info", "warning", "error"]
    p.add_argument("--log-level", default="info", choices=levels)
    p.add_argument("--log-format", default="text", choices=list(_logging.FORMATS),
                   help="text: one line per event, for people (default); "
                   "json: one JSON object per line")
    # The same options are accepted after the command too (``trawl run --log-level debug``).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels)
    common.add_argument("--log-format", default=argparse.SUPPRESS,
                        choices=list(_logging.FORMATS))
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("plugins", parents=[common],
                        help="list installed plugins and what they register")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sc = sub.add_parser("check", parents=[common], help="validate a configuration file")
    sc.add_argument("config")
    sd = sub.add_parser("discover", parents=[common],
                        help="print discovered targets as JSON lines")
    sd.add_argument("-c", "--config", required=True)
    sd.add_argument("--once", action="store_true", help="print the first snapshot and exit")
    sr = sub.add_parser("run", parents=[common], help="discover, scrape and write")
    sr.add_argument("-c", "--config", default=None,
                    help="configuration file (default: the embedded default)")
    st = sub.add_parser("targets", parents=[common],
                        help="print a running trawl's targets as a table")
    st.add_argument("--url", default=os.environ.get("TRAWL_URL", DEFAULT_URL),
                    help="the instance's HTTP address (default: $TRAWL_URL or %(default)s)")
    st.add_argument("--scrape-pool", action="append", default=[], metavar="NAME",
                    help="only this scraper's targets (repeatable)")
    st.add_argument("--username", default=os.environ.get("TRAWL_USERNAME", ""),
                    help="basic auth user name (default: $TRAWL_USERNAME)")
    st.add_argument("--password-file", default="",
                    help="file holding the basic auth password (default: $TRAWL_PASSWORD)")
    st.add_argument("--bearer-token-file", default="",
                    help="file holding a bearer token (default: $TRAWL_BEARER_TOKEN)")
    st.add_argument("--ca-file", default="", help="CA certificates to verify an HTTPS instance")
    st.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for the answer (default: %(default)s)")
    spa = sub.add_parser("parse", parents=[common],
                         help="parse an exposition file and print its samples as "
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


async def _run(config: Config, registry: Registry,
               source: Callable[[], Config] | None = None,
               logs: _logging.Logging | None = None) -> None:
    """Run a host; a terminal on standard error gets the live status line (not with
    ``--log-format json``).

    Args:
      source: Reads the configuration again, for reloads.
      logs: The logging `main` set up; the secrets of each configuration that
        ``source`` reads are masked from then on.
    """
    if source is not None and logs is not None:
        read = source

        def source_masked() -> Config:
            new = read()
            logs.masker.add(_logging.config_secrets(new))
            return new

        source = source_masked
    host = Host(config, registry, source)
    log = logging.getLogger("trawl")
    log.info("%s", config.summary())
    # The scrape caches hold a few objects per series for as long as the series lives, and
    # every scrape allocates a tuple per sample: with the default thresholds the cyclic
    # collector walks those caches again and again for nothing (bench/: ~10% of the CPU).
    gc.set_threshold(50_000, 50, 1000)
    async with trio.open_nursery() as nursery:
        if logs is not None and logs.interactive:
            nursery.start_soon(run_status, host, logs.handler)
        await host.run()
        nursery.cancel_scope.cancel()
    log.info("stopped")


def _targets(args: argparse.Namespace) -> int:
    """``trawl targets``: a running instance's ``/api/v1/targets`` as a table."""
    import httpx

    url = args.url.rstrip("/")
    headers = {"Accept": "application/json"}
    auth = None
    try:
        token = _secret_arg(args.bearer_token_file, "TRAWL_BEARER_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif args.username:
            auth = (args.username, _secret_arg(args.password_file, "TRAWL_PASSWORD"))
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    params = [("state", "active"), *(("scrapePool", p) for p in args.scrape_pool)]
    verify: Any = args.ca_file or True
    try:
        with httpx.Client(timeout=args.timeout, verify=verify, trust_env=False) as client:
            resp = client.get(f"{url}/api/v1/targets", params=params, headers=headers,
                              auth=auth)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach trawl at {url}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
    if resp.status_code == 401:
        print(f"error: {url} asks for credentials: use --username and --password-file, "
              "or --bearer-token-file", file=sys.stderr)
        return 1
    try:
        body = resp.json()
        targets = body["data"]["activeTargets"]
    except (ValueError, KeyError, TypeError):
        print(f"error: {url}/api/v1/targets answered HTTP {resp.status_code} without "
              "a targets list: is this a trawl (or Prometheus) instance?", file=sys.stderr)
        return 1
    now = time.time()
    rows: list[tuple[str, ...]] = [
        ("SCRAPE POOL", "HEALTH", "SCRAPE URL", "LAST SCRAPE", "LAST ERROR")]
    for t in sorted(targets, key=lambda t: (t.get("scrapePool", ""), t.get("scrapeUrl", ""))):
        rows.append((t.get("scrapePool", ""), t.get("health", ""), t.get("scrapeUrl", ""),
                     _ago(t.get("lastScrape", ""), t.get("lastScrapeDuration"), now),
                     " ".join(str(t.get("lastError") or "").split())))
    print(_table(rows))
    return 0


def _secret_arg(path: str, env: str) -> str:
    if path:
        with open(path) as f:
            return f.read().strip()
    return os.environ.get(env, "")


def _ago(stamp: str, duration: float | None, now: float) -> str:
    """``"3s ago (12ms)"`` from an RFC 3339 time; ``"never"`` for Go's zero time."""
    if not stamp or stamp.startswith("0001-"):
        return "never"
    head, _, frac = stamp.rstrip("Z").partition(".")
    try:
        when = datetime.fromisoformat(head + "+00:00").timestamp() + float(f"0.{frac or 0}")
    except ValueError:
        return stamp
    seconds = max(now - when, 0.0)
    text = f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"
    if isinstance(duration, int | float):
        text += f" ({duration * 1000:.0f}ms)" if duration < 1 else f" ({duration:.1f}s)"
    return text


def _table(rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in rows)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
