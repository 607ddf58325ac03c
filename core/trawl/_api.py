"""trawl's HTTP endpoints: self-metrics, Prometheus-compatible targets API, health, reload,
and the targets page."""

from __future__ import annotations

import base64
import hmac
import json
import socket
import time
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ._duration import prom_duration
from ._httpserver import Request, Response
from ._scrape import with_scrape_defaults
from ._selfmetrics import render

if TYPE_CHECKING:
    from ._host import Host

UNAUTHORIZED = Response(401, b"unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="trawl"'})
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def rfc3339(ts: float | None) -> str:
    """Go's RFC3339Nano in UTC, or Go's zero time when ``ts`` is None."""
    if ts is None:
        return "0001-01-01T00:00:00Z"
    ns = round(ts * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def global_url(url: str) -> str:
    """The scrape URL with a loopback host replaced by this machine's name, as Prometheus."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host not in _LOOPBACK_HOSTS:
        return url
    netloc = socket.gethostname() + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Api:
    """Routes requests to a running host's state."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def _authorized(self, request: Request) -> bool:
        http = self.host.config.http
        if http is None or not http.auth_enabled:
            return True
        given = request.headers.get("authorization", "")
        token = http.bearer_token.get_secret_value()
        if token and given.startswith("Bearer "):
            return hmac.compare_digest(given[7:].encode(), token.encode())
        if http.username and given.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(given[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            ok_user = hmac.compare_digest(user.encode(), http.username.encode())
            ok_pass = hmac.compare_digest(password.encode(),
                                          http.password.get_secret_value().encode())
            return ok_user and ok_pass
        return False

    async def __call__(self, request: Request) -> Response:
        path = request.path
        if path == "/-/healthy":
            return Response.text(200, "trawl is healthy\n")
        if not self._authorized(request):
            return UNAUTHORIZED
        if path == "/-/reload":
            if request.method not in ("POST", "PUT"):
                return Response(405, b"use POST\n", headers={"Allow": "POST"})
            errors = await self.host.reload()
            if errors:
                return Response(400, json.dumps({"status": "error", "errors": errors}).encode(),
                                "application/json")
            return Response(200, b'{"status":"success"}', "application/json")
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers={"Allow": "GET, HEAD"})
        if path == "/metrics":
            return Response(200, render(self.host).encode(),
                            "text/plain; version=0.0.4; charset=utf-8")
        if path == "/-/ready":
            if self.host.ready.is_set():
                return Response.text(200, "trawl is ready\n")
            return Response.text(503, "trawl is starting\n")
        if path == "/api/v1/targets":
            return self._targets(request)
        if path in ("/targets", "/"):
            page = resources.files("trawl").joinpath("_targets.html").read_bytes()
            return Response(200, page, "text/html; charset=utf-8",
                            {"Cache-Control": "no-store"})
        return Response.text(404, "not found\n")

    def _targets(self, request: Request) -> Response:
        state = request.param("state", "any")
        if state not in ("any", "active", "dropped"):
            return _api_error(400, f"invalid state {state!r}: use active, dropped or any")
        pools = set(request.query.get("scrapePool", []))
        data = targets_data(self.host, state, pools)
        return Response(200, json.dumps({"status": "success", "data": data}).encode(),
                        "application/json")


def targets_data(host: Host, state: str = "any", pools: set[str] | None = None
                 ) -> dict[str, Any]:
    """``/api/v1/targets``'s ``data``, as Prometheus 2.42 shapes it."""
    active: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for pool in host.pools:
        name = pool.scraper.name
        if pools and name not in pools:
            continue
        if state in ("any", "active"):
            for loop, _ in pool.loops.values():
                h = loop.health
                active.append({
                    "discoveredLabels": with_scrape_defaults(dict(loop.target.discovered),
                                                             pool.scraper),
                    "labels": dict(loop.target.labels),
                    "scrapePool": name,
                    "scrapeUrl": loop.target.url,
                    "globalUrl": global_url(loop.target.url),
                    "lastError": h.last_error,
                    "lastScrape": rfc3339(h.last_scrape),
                    "lastScrapeDuration": h.last_duration,
                    "health": h.health,
                    "scrapeInterval": prom_duration(pool.scraper.scrape_interval),
                    "scrapeTimeout": prom_duration(pool.scraper.scrape_timeout),
                })
        if state in ("any", "dropped"):
            for discovered, _reason in pool.dropped:
                dropped.append({"discoveredLabels": with_scrape_defaults(dict(discovered.labels),
                                                                        pool.scraper)})
    out: dict[str, Any] = {}
    if state in ("any", "active"):
        out["activeTargets"] = active
    if state in ("any", "dropped"):
        out["droppedTargets"] = dropped
    return out


def _api_error(status: int, message: str) -> Response:
    body = json.dumps({"status": "error", "errorType": "bad_data", "error": message})
    return Response(status, body.encode(), "application/json")
