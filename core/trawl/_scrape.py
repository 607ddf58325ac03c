"""Scraping: target labels, one loop per target, and the manager that reconciles them."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import ssl
import time
import zlib
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx
import trio

from . import __version__
from ._batch import Batch, Point, Series
from ._config import ScraperConfig
from ._discovery import DiscoveredTarget, DiscoveryManager
from ._duration import format_duration, prom_duration
from ._errors import TrawlError
from ._formats import MAPPERS, Mapper
from ._parsing import ParseError, Parser
from ._plugins import Registry
from ._processing import Processor
from ._relabel import relabeler
from ._targets import ADDRESS, METRICS_PATH, PARAM_PREFIX, SCHEME, Labels
from ._tls import error_reason, is_tls_error, tls_context

log = logging.getLogger("trawl.scrape")

ACCEPT_TEXT = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
USER_AGENT = f"trawl/{__version__}"


class ScrapeError(TrawlError):
    """A scrape failed; the message is the target's last error."""


@dataclass(frozen=True)
class ScrapeTarget:
    """A target after label processing, ready to scrape.

    Attributes:
      discovered: The labels as discovered (``__meta_*`` and all).
      labels: The final target labels (``job``, ``instance``, group labels ...).
      url: Where to scrape.
    """

    discovered: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    url: str

    @property
    def key(self) -> tuple[tuple[tuple[str, str], ...], str]:
        return self.labels, self.url


@dataclass
class TargetHealth:
    """What the last scrapes of a target did."""

    health: str = "unknown"
    last_error: str = ""
    last_error_time: float | None = None
    last_failure: str = ""
    last_failure_time: float | None = None
    last_scrape: float | None = None
    last_duration: float = 0.0
    scrapes: int = 0
    failures: int = 0
    samples: int = 0


def with_scrape_defaults(labels: Labels, scraper: ScraperConfig) -> Labels:
    """Add what the scrape configuration sets before relabeling (``job``, ``__scheme__``,
    ``__metrics_path__``, ``__scrape_interval__``, ``__scrape_timeout__``, ``__param_*``),
    as Prometheus does; these are also the ``discoveredLabels`` its API shows."""
    for key, value in (("job", scraper.name), (SCHEME, scraper.scheme),
                       (METRICS_PATH, scraper.metrics_path),
                       ("__scrape_interval__", prom_duration(scraper.scrape_interval)),
                       ("__scrape_timeout__", prom_duration(scraper.scrape_timeout))):
        if not labels.get(key):
            labels[key] = value
    for key, values in scraper.params.items():  # Prometheus: the scraper's params win
        if values:
            labels[PARAM_PREFIX + key] = values[0]
    return labels


def build_target(
    discovered: Labels, scraper: ScraperConfig,
    relabel: Callable[[Labels], Labels | None] | None = None,
) -> tuple[ScrapeTarget | None, str]:
    """Turn discovered labels into a target, as Prometheus's ``populateLabels`` does.

    Returns:
      The target, or ``None`` and the reason it was dropped.
    """
    labels = with_scrape_defaults(dict(discovered), scraper)
    if relabel is not None:
        relabeled = relabel(labels)
        if relabeled is None:
            return None, "dropped by relabeling"
        labels = relabeled
    address = labels.get(ADDRESS, "")
    if not address:
        return None, "no __address__ label"
    if "/" in address:
        return None, f"invalid __address__ {address!r}: contains a path"
    scheme = labels.get(SCHEME, "http")
    if scheme not in ("http", "https"):
        return None, f"invalid __scheme__ {scheme!r}"
    address = _with_port(address, scheme)
    labels[ADDRESS] = address
    if address in scraper.blacklist or labels.get("instance") in scraper.blacklist:
        return None, "blacklisted"
    params: dict[str, list[str]] = {k: list(v) for k, v in scraper.params.items()}
    for key, value in labels.items():
        if key.startswith(PARAM_PREFIX):
            name = key[len(PARAM_PREFIX):]
            rest = params.get(name, [])[1:]
            params[name] = [value, *rest]
    path = labels.get(METRICS_PATH, "/metrics")
    query = urlencode(params, doseq=True)
    url = f"{scheme}://{address}{path}" + (f"?{query}" if query else "")
    final = {k: v for k, v in labels.items() if not k.startswith("__") and v != ""}
    final.setdefault("instance", address)
    return (
        ScrapeTarget(
            tuple(sorted(discovered.items())), tuple(sorted(final.items())), url
        ),
        "",
    )


def _with_port(address: str, scheme: str) -> str:
    if address.startswith("["):
        if "]:" in address:
            return address
    elif ":" in address:
        return address
    return f"{address}:{443 if scheme == 'https' else 80}"


def target_offset(target: ScrapeTarget, interval: float) -> float:
    """A stable phase within the interval, so targets spread out instead of firing together."""
    digest = hashlib.blake2b(repr(target.key).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % max(int(interval * 1e9), 1)) / 1e9


def ssl_context(scraper: ScraperConfig) -> ssl.SSLContext:
    """The TLS context of a scraper's keys, shared by all its targets."""
    return tls_context(ca=scraper.ssl_ca, cert=scraper.ssl_cert, key=scraper.ssl_key,
                       insecure=scraper.insecure_skip_verify)


def http_client(scraper: ScraperConfig) -> httpx.AsyncClient:
    """An HTTP client configured from a scraper's TLS, auth and proxy keys."""
    auth = None
    if scraper.username or scraper.password.get_secret_value():
        auth = httpx.BasicAuth(scraper.username, scraper.password.get_secret_value())
    return httpx.AsyncClient(
        verify=ssl_context(scraper),
        auth=auth,
        proxy=scraper.proxy_url or None,
        trust_env=False,
        follow_redirects=True,
        timeout=httpx.Timeout(scraper.scrape_timeout),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


class ScrapeLoop:
    """Scrapes one target on its interval and hands the points to the sinks."""

    def __init__(self, target: ScrapeTarget, scraper: ScraperConfig, pool: ScrapePool) -> None:
        self.target = target
        self.scraper = scraper
        self.pool = pool
        self.health = TargetHealth()
        self._labels = dict(target.labels)
        self._cache: dict[str, Series | None] = {}
        if pool.metric_relabel is None and scraper.metric_relabel_configs:
            pool.metric_relabel = relabeler(scraper.metric_relabel_configs)
        self._relabel = pool.metric_relabel
        self._mapper: Mapper = pool.mapper or MAPPERS[scraper.format]
        self._kapacitor = self._mapper is MAPPERS["kapacitor"]
        self._types: dict[str, str] | None = None
        self._typed = [p for p in pool.processors if getattr(p, "wants_types", False)]
        self._auto: dict[str, Series] = {
            name: self._mapper(name, dict(self._labels), {})
            for name in ("up", "scrape_duration_seconds", "scrape_samples_scraped",
                         "scrape_samples_post_metric_relabeling", "scrape_series_added")
        }
        self._headers = {
            "Accept": pool.accept,
            "Accept-Encoding": "gzip",
            "User-Agent": USER_AGENT,
            "X-Prometheus-Scrape-Timeout-Seconds": f"{scraper.scrape_timeout:g}",
        }
        token = scraper.bearer_token.get_secret_value()
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._extensions = (
            {"sni_hostname": scraper.ssl_server_name} if scraper.ssl_server_name else {}
        )
        self._token_file = _TokenFile(scraper.bearer_token_file) if scraper.bearer_token_file \
            else None
        self._request: httpx.Request | None = None
        self._request_client: httpx.AsyncClient | None = None

    async def run(self) -> None:
        interval = self.scraper.scrape_interval
        now = trio.current_time()
        phase = target_offset(self.target, interval)
        deadline = now + ((phase - now) % interval)
        pool = self.pool
        async with http_client(self.scraper) as client:
            while True:
                await trio.sleep_until(deadline)
                late = trio.current_time() - deadline
                if late > pool.max_lateness:
                    pool.max_lateness = late
                if late > 1.0:
                    pool.late_scrapes += 1
                await self.scrape_once(client)
                deadline += interval
                now = trio.current_time()
                if deadline <= now:  # fell behind: skip the missed slots, keep the phase
                    missed = math.ceil((now - deadline) / interval)
                    pool.missed_scrapes += missed
                    deadline += missed * interval

    async def scrape_once(self, client: httpx.AsyncClient) -> None:
        started = time.time()
        t0 = time.perf_counter()
        ts_ms = int(started * 1000)
        points: list[Point] = []
        scraped = added = 0
        error = ""
        try:
            with trio.fail_after(self.scraper.scrape_timeout):
                body, content_type = await self._fetch(client)
            scraped, added = self._points(body, content_type, ts_ms, points)
        except trio.TooSlowError:
            error = f"scrape timed out after {format_duration(self.scraper.scrape_timeout)}"
        except (ScrapeError, ParseError) as exc:
            error = str(exc)
        except httpx.HTTPError as exc:
            error = _describe_http_error(exc)
        except ssl.SSLError as exc:
            error = f"TLS error: {exc}"
        except Exception as exc:  # a bug in a parser or processor plugin downs this target only
            error = f"internal error in a parser or processor: {exc!r}"
            if self.health.health != "down":
                log.error("target %s: %s", self.target.url, error, exc_info=exc)
        duration = time.perf_counter() - t0
        h = self.health
        h.scrapes += 1
        h.last_scrape = started
        h.last_duration = duration
        if error:
            points = []
            scraped = added = 0
            h.failures += 1
            if h.health != "down":
                log.warning("target %s is down: %s", self.target.url, error,
                            extra={"scrape_pool": self.scraper.name, "target": self.target.url})
            h.health = "down"
            h.last_error = h.last_failure = error
            h.last_error_time = h.last_failure_time = started
        else:
            if h.health == "down":
                log.warning("target %s is up again", self.target.url,
                            extra={"scrape_pool": self.scraper.name, "target": self.target.url})
            h.health = "up"
            h.last_error = ""
        post = len(points)
        h.samples = post
        auto = self._auto
        points.append((auto["up"], 0.0 if error else 1.0, ts_ms))
        points.append((auto["scrape_duration_seconds"], duration, ts_ms))
        points.append((auto["scrape_samples_scraped"], float(scraped), ts_ms))
        points.append((auto["scrape_samples_post_metric_relabeling"], float(post), ts_ms))
        points.append((auto["scrape_series_added"], float(added), ts_ms))
        self.pool.deliver(points)

    async def _fetch(self, client: httpx.AsyncClient) -> tuple[bytes, str]:
        limit = self.scraper.body_size_limit
        request = self._request
        if request is None or self._request_client is not client or self._token_file:
            # Building a request (URL parsing, header merging) costs about a quarter of a
            # fetch: build it once per client and send the same one every scrape.
            headers = self._headers
            if self._token_file is not None:
                headers = {**headers, "Authorization": f"Bearer {self._token_file.read()}"}
            request = client.build_request("GET", self.target.url, headers=headers,
                                           extensions=self._extensions)
            self._request, self._request_client = request, client
        resp = await client.send(request, stream=True)
        try:
            if resp.status_code >= 400 or resp.status_code < 200:
                raise ScrapeError(f"server returned HTTP status {resp.status_code} "
                                  f"{resp.reason_phrase}".rstrip())
            chunks = []
            size = 0
            async with aclosing(resp.aiter_raw()) as raw_chunks:  # type: ignore[type-var]
                async for chunk in raw_chunks:
                    size += len(chunk)
                    if limit and size > limit:
                        raise ScrapeError(f"body size limit exceeded: more than {limit} bytes")
                    chunks.append(chunk)
            raw = b"".join(chunks)
            encoding = resp.headers.get("content-encoding", "").lower()
            if encoding == "gzip":
                raw = _gunzip(raw, limit)
            elif encoding not in ("", "identity"):
                raise ScrapeError(f"unsupported Content-Encoding {encoding!r}")
            return raw, resp.headers.get("content-type", "")
        finally:
            await resp.aclose()

    def _points(self, body: bytes, content_type: str, ts_ms: int,
                points: list[Point]) -> tuple[int, int]:
        parser = self.pool.parser(content_type)
        scraped = parser.parse(body)
        if not self._kapacitor and scraped.types != self._types:
            self._types = scraped.types  # Telegraf mappings depend on the family types
            self._cache = {}
        cache = self._cache
        get = cache.get
        new: dict[str, Series | None] = {}
        honor_ts = self.scraper.honor_timestamps
        append = points.append
        samples = scraped.samples
        for text, value, ts in samples:
            series = get(text, _MISSING)
            if series is _MISSING:
                series = new.get(text, _MISSING)
                if series is _MISSING:
                    series = new[text] = self._series(parser, text)
            # NaN and infinities are not writable to InfluxDB: both fail this comparison.
            if series is None or not _NEG_INF < value < _INF:
                continue
            append((series, value, ts_ms if ts is None or not honor_ts else ts))  # type: ignore[arg-type]
        if self.pool.processors:
            for processor in self._typed:
                processor.types = scraped.types  # type: ignore[attr-defined]
            kept = points
            for processor in self.pool.processors:
                kept = processor.process(kept)
            points[:] = kept
        limit = self.scraper.sample_limit
        if limit and len(points) > limit:
            raise ScrapeError(f"sample limit exceeded: {len(points)} samples, limit {limit}")
        if new:
            cache.update(new)
        if len(cache) > 2 * len(samples) + 64:  # series went away: forget them
            self._cache = {t: cache[t] for t, _, _ in samples}
        return len(samples), len(new)

    def _series(self, parser: Parser, text: str) -> Series | None:
        """A cache miss: target and sample labels, metric relabeling, InfluxDB mapping.

        The result (``None`` when metric relabeling drops the series) is cached by the
        caller, so all of this runs once per series, not once per sample.
        """
        name, labels = parser.parse_series(text)
        tags = dict(self._labels)
        if self.scraper.honor_labels:
            tags.update((k, v) for k, v in labels.items() if v)
        else:
            for key, value in labels.items():
                if key in tags:
                    if value:
                        tags["exported_" + key] = value
                else:
                    tags[key] = value
        if self._relabel is not None:
            relabeled = self._relabel({**tags, "__name__": name})
            if relabeled is None:
                return None
            name = relabeled.pop("__name__", "")
            if not name:
                raise ScrapeError("metric relabeling removed __name__ from series "
                                  f"{text[:100]!r}: a series needs a name")
            tags = relabeled
        check_label_limits(self.scraper, name, tags)
        return self._mapper(name, tags, self._types or {})


def check_label_limits(scraper: ScraperConfig, name: str, tags: dict[str, str]) -> None:
    """Fail the scrape as Prometheus does when a series breaks a label limit."""
    if scraper.label_limit and len(tags) + 1 > scraper.label_limit:
        raise ScrapeError(f"label_limit exceeded (metric: {name[:50]}, number of labels: "
                          f"{len(tags) + 1}, limit: {scraper.label_limit})")
    name_limit = scraper.label_name_length_limit
    value_limit = scraper.label_value_length_limit
    if not name_limit and not value_limit:
        return
    for key, value in tags.items():
        if name_limit and len(key) > name_limit:
            raise ScrapeError(f"label_name_length_limit exceeded (metric: {name[:50]}, label "
                              f"name: {key[:50]}, length: {len(key)}, limit: {name_limit})")
        if value_limit and len(value) > value_limit:
            raise ScrapeError(f"label_value_length_limit exceeded (metric: {name[:50]}, label "
                              f"name: {key[:50]}, value: {value[:50]!r}, length: {len(value)}, "
                              f"limit: {value_limit})")


class _TokenFile:
    """A bearer token file, read again whenever it changes (tokens rotate)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def read(self) -> str:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path) as f:
                    self._token = f.read().strip()
                self._stamp = stamp
        except OSError as exc:
            raise ScrapeError(
                f"cannot read bearer-token-file {self.path}: {exc.strerror}"
            ) from None
        return self._token


_MISSING = object()
_INF = math.inf
_NEG_INF = -math.inf


def _gunzip(raw: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, limit + 1 if limit else 0)
    except zlib.error as exc:
        raise ScrapeError(f"invalid gzip body: {exc}") from None
    if limit and len(out) > limit:
        raise ScrapeError(f"body size limit exceeded: more than {limit} bytes after gunzip")
    return out


def _describe_http_error(exc: httpx.HTTPError) -> str:
    """A readable last error: the innermost cause's message, with what kind of failure."""
    detail = error_reason(exc)
    if is_tls_error(exc):
        return f"TLS error: {detail}"
    if isinstance(exc, httpx.TimeoutException):
        return "scrape timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {detail}"
    return detail


@dataclass
class ScrapePool:
    """All the loops of one scraper, fed by its discoverer."""

    scraper: ScraperConfig
    registry: Registry
    deliver_batch: Callable[[Batch], None]
    processors: list[Processor] = field(default_factory=list)
    relabel: Callable[[Labels], Labels | None] | None = None
    metric_relabel: Callable[[Labels], Labels | None] | None = None
    mapper: Mapper | None = None
    loops: dict[object, tuple[ScrapeLoop, trio.CancelScope]] = field(
        default_factory=dict
    )
    dropped: list[tuple[DiscoveredTarget, str]] = field(default_factory=list)
    accept: str = ACCEPT_TEXT
    max_lateness: float = 0.0
    late_scrapes: int = 0
    missed_scrapes: int = 0

    def __post_init__(self) -> None:
        accepts = [p.accept_header for p in self.registry.parsers.values()
                   if getattr(p, "accept_header", "")]
        if accepts:
            self.accept = ",".join([*accepts, "*/*;q=0.1"])
        self._parsers: dict[str, Parser] = {}

    def parser(self, content_type: str) -> Parser:
        cached = self._parsers.get(content_type)
        if cached is None:
            cls = self.registry.parser_for(content_type) or self.registry.parsers[
                "prometheus-text"]
            cached = self._parsers[content_type] = cls()
        return cached

    def deliver(self, points: list[Point]) -> None:
        self.deliver_batch(Batch(self.scraper.db, self.scraper.rp, points))

    def desired(self, discovered: Sequence[DiscoveredTarget]) -> dict[object, ScrapeTarget]:
        want: dict[object, ScrapeTarget] = {}
        self.dropped = []
        if self.relabel is None and self.scraper.relabel_configs:
            self.relabel = relabeler(self.scraper.relabel_configs)
        for d in discovered:
            target, why = build_target(d.labels, self.scraper, self.relabel)
            if target is None:
                self.dropped.append((d, why))
            else:
                want.setdefault(target.key, target)
        return want

    def reconcile(self, nursery: trio.Nursery, discovered: Sequence[DiscoveredTarget]) -> None:
        """Start loops for new targets, stop those that vanished, leave the rest alone."""
        want = self.desired(discovered)
        for key in list(self.loops):
            if key not in want:
                _, scope = self.loops.pop(key)
                scope.cancel()
        for key, target in want.items():
            if key not in self.loops:
                loop = ScrapeLoop(target, self.scraper, self)
                scope = trio.CancelScope()
                self.loops[key] = (loop, scope)
                nursery.start_soon(_run_in_scope, scope, loop.run)


async def _run_in_scope(scope: trio.CancelScope, fn: Callable[[], object]) -> None:
    with scope:
        await fn()  # type: ignore[misc]


class ScrapeManager:
    """One `ScrapePool` per enabled scraper, reconciled whenever discovery changes."""

    def __init__(self, discovery: DiscoveryManager, pools: list[ScrapePool]) -> None:
        self.discovery = discovery
        self.pools = pools

    def _discoverer_of(self, pool: ScrapePool) -> str:
        return f"{pool.scraper.discoverer_service}/{pool.scraper.discoverer_id}"

    def replace_pools(self, pools: list[ScrapePool], stopped: list[ScrapePool]) -> None:
        """Scrape ``pools`` from now on; every loop of the ``stopped`` pools ends."""
        for pool in stopped:
            for _, scope in pool.loops.values():
                scope.cancel()
            pool.loops.clear()
        self.pools = pools
        self.discovery.notify()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            seen = -1
            started = False
            while True:
                version = self.discovery.version
                if version != seen:
                    seen = version
                    for pool in self.pools:
                        pool.reconcile(
                            nursery, self.discovery.snapshot(self._discoverer_of(pool))
                        )
                if not started:
                    task_status.started()
                    started = True
                await self.discovery.wait_changed(seen)
