"""The InfluxDB sink: ``/write`` (api = "v1") or influxdb-client's write API (api = "v2")."""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import re
import ssl
import time
from typing import Any

import httpx
import trawl
import trio

from ._config import InfluxDBConfig

log = logging.getLogger("trawl.sinks.influxdb")

_DROPPED = re.compile(r"dropped=(\d+)")


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (a number, or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def error_message(body: bytes | str | None) -> str:
    """The ``error`` (1.x) or ``message`` (2.x/3.x) of an InfluxDB error answer."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(data, dict):
        msg = data.get("error") or data.get("message") or text
        return str(msg).strip()[:2000]
    return text.strip()[:500]


def rejected_lines(message: str, batch_size: int) -> int | None:
    """How many lines a partial write refused, or None when it is no partial write.

    InfluxDB 1.x and 2.x write the valid points of a batch and answer 400 (2.x: 422)
    ``partial write: ... dropped=N``; a parse error names each line it could not parse.
    """
    if "partial write" not in message.lower():
        return None
    m = _DROPPED.search(message)
    if m:
        return min(int(m.group(1)), batch_size)
    count = message.count("unable to parse")
    return min(max(count, 1), batch_size)


def classify(status: int, message: str, headers: Any, url: str,
             batch_size: int) -> trawl.SinkError:
    """The `trawl.SinkError` for an HTTP error answer from InfluxDB."""
    text = f"{url}: HTTP {status}: {message or 'no message'}"
    if status == 429 or status >= 500:
        value = headers.get("Retry-After") if headers is not None else None
        return trawl.SinkError(text, retry_after=retry_after(value))
    if status in (401, 403):
        return trawl.SinkError(text + " (check username/password or token)")
    if status == 404:
        hint = " (create it, or set create-database = true)" \
            if "database not found" in message else ""
        return trawl.SinkError(text + hint)
    if 400 <= status < 500:
        rejected = rejected_lines(message, batch_size)
        if rejected is not None:
            return trawl.SinkError(text, retryable=False, rejected=rejected)
        return trawl.SinkError(text, retryable=False)
    return trawl.SinkError(text)


def quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxDBSink(trawl.Sink):
    """Writes each batch to the database and retention policy of its scraper.

    ``urls`` are tried in order on `open` (``GET /ping``); the first that answers is
    used until a request to it fails at the connection level, then they are tried again.
    """

    kind = "influxdb"
    Config = InfluxDBConfig
    config: InfluxDBConfig

    def __init__(self, config: InfluxDBConfig) -> None:
        super().__init__(config)
        self.url = ""
        self._http: httpx.AsyncClient | None = None
        self._v2: Any = None
        self._v2_write: Any = None
        self._v2_url = ""
        self._limiter = trio.CapacityLimiter(1)
        self._created: set[str] = set()

    # ------------------------------------------------------------------ connecting
    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self.config
        if cfg.insecure_skip_verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif cfg.ssl_ca:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca)
        elif cfg.ssl_cert:
            ctx = ssl.create_default_context()
        else:
            return True
        if cfg.ssl_cert:
            ctx.load_cert_chain(cfg.ssl_cert, cfg.ssl_key)
        return ctx

    async def open(self) -> None:
        if self._http is None:
            cfg = self.config
            try:
                verify = self._ssl()
            except (OSError, ssl.SSLError) as exc:
                raise trawl.SinkError(f"influxdb {self.name}: TLS files: {exc}",
                                      retryable=False) from None
            auth = None
            if cfg.username and cfg.api == "v1":
                auth = httpx.BasicAuth(cfg.username, cfg.password.get_secret_value())
            headers = {}
            if cfg.token.get_secret_value() and cfg.api == "v1":
                headers["Authorization"] = "Token " + cfg.token.get_secret_value()
            self._http = httpx.AsyncClient(
                verify=verify, auth=auth, headers=headers,
                timeout=httpx.Timeout(cfg.request_timeout),
            )
        self.url = await self._reachable()
        if self.config.api == "v2" and self._v2_url != self.url:
            if self._v2 is not None:
                old, self._v2 = self._v2, None
                await trio.to_thread.run_sync(old.close)
            self._v2, self._v2_write = await trio.to_thread.run_sync(self._make_v2, self.url)
            self._v2_url = self.url

    async def _reachable(self) -> str:
        assert self._http is not None
        problems = []
        for url in self.config.urls:
            try:
                with trio.fail_after(self.config.request_timeout):
                    resp = await self._http.get(url + "/ping")
            except (httpx.HTTPError, trio.TooSlowError) as exc:
                problems.append(f"{url}: {_describe(exc)}")
                continue
            if resp.status_code < 300:
                if url != self.url:
                    log.info("influxdb %s: writing to %s", self.name, url)
                return url
            problems.append(f"{url}: /ping answered HTTP {resp.status_code}")
        raise trawl.SinkError(f"influxdb {self.name}: no URL reachable: " + "; ".join(problems))

    def _make_v2(self, url: str) -> tuple[Any, Any]:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        cfg = self.config
        token = cfg.token.get_secret_value()
        if not token and cfg.username:
            token = f"{cfg.username}:{cfg.password.get_secret_value()}"
        client = InfluxDBClient(
            url=url, token=token, org=cfg.org or "-",
            timeout=int(cfg.request_timeout * 1000), enable_gzip=cfg.gzip,
            verify_ssl=not cfg.insecure_skip_verify, ssl_ca_cert=cfg.ssl_ca or None,
            cert_file=cfg.ssl_cert or None, cert_key_file=cfg.ssl_key or None, retries=False,
        )
        return client, client.write_api(write_options=SYNCHRONOUS)

    # ------------------------------------------------------------------ writing
    async def write(self, batch: trawl.Batch) -> None:
        if not self.url:
            await self.open()
        if self.config.api == "v2":
            await self._write_v2(batch)
        else:
            await self._write_v1(batch)

    async def _write_v1(self, batch: trawl.Batch) -> None:
        assert self._http is not None
        body = batch.line_protocol().encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        params = {"db": batch.db, "precision": "ms"}
        if batch.rp:
            params["rp"] = batch.rp
        for _ in range(2):
            resp = await self._post(self.url + "/write", params=params, content=body,
                                    headers=headers)
            if resp.status_code < 300:
                return
            message = error_message(resp.content)
            if (resp.status_code == 404 and "database not found" in message
                    and self.config.create_database and batch.db not in self._created):
                await self.create_database(batch.db)
                continue
            raise classify(resp.status_code, message, resp.headers, self.url, len(batch))

    async def _post(self, url: str, **kw: Any) -> httpx.Response:
        assert self._http is not None
        try:
            with trio.fail_after(self.config.request_timeout):
                return await self._http.post(url, **kw)
        except (httpx.HTTPError, trio.TooSlowError) as exc:
            self.url = ""          # try every URL again next time
            raise trawl.SinkError(f"{url.rsplit('/', 1)[0]}: {_describe(exc)}") from None

    async def create_database(self, db: str) -> None:
        """``CREATE DATABASE`` (1.x); idempotent on the server."""
        resp = await self._post(self.url + "/query",
                                data={"q": f"CREATE DATABASE {quote_ident(db)}"})
        if resp.status_code >= 300:
            raise classify(resp.status_code, error_message(resp.content), resp.headers,
                           self.url, 0)
        self._created.add(db)
        log.info("influxdb %s: created database %s", self.name, db)

    async def _write_v2(self, batch: trawl.Batch) -> None:
        cfg = self.config
        bucket = cfg.bucket or (f"{batch.db}/{batch.rp}" if batch.rp else batch.db)
        body = batch.line_protocol()
        url = self.url
        try:
            with trio.fail_after(cfg.request_timeout + 1):
                await trio.to_thread.run_sync(self._v2_blocking_write, url, bucket, body,
                                              len(batch), limiter=self._limiter,
                                              abandon_on_cancel=True)
        except trio.TooSlowError:
            self.url = ""
            raise trawl.SinkError(f"{url}: timed out") from None
        except _ConnectionFailed as exc:
            self.url = ""          # try every URL again next time
            raise trawl.SinkError(str(exc)) from None

    def _v2_blocking_write(self, url: str, bucket: str, body: str, size: int) -> None:
        """In a worker thread: one synchronous write through influxdb-client."""
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._v2_write.write(bucket=bucket, org=self.config.org or "-", record=body,
                                 write_precision=WritePrecision.MS)
        except ApiException as exc:
            raise classify(int(exc.status or 0), error_message(exc.body), exc.headers, url,
                           size) from None
        except Exception as exc:  # urllib3's connection errors, timeouts, ...
            raise _ConnectionFailed(f"{url}: {_describe(exc)}") from None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._v2 is not None:
            client, self._v2 = self._v2, None
            await trio.to_thread.run_sync(client.close)


def _innermost(exc: BaseException) -> str:
    """The most precise message in an exception's chain (httpx hides TLS errors there)."""
    text = str(exc)
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 10:
        if str(cause):
            text = str(cause)
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return text or type(exc).__name__


class _ConnectionFailed(Exception):
    """Raised in the worker thread when influxdb-client could not get an answer."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (httpx.TimeoutException, trio.TooSlowError)):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {_innermost(exc)}"
    name = type(exc).__name__
    text = str(exc)
    reason = getattr(exc, "reason", None)    # urllib3's MaxRetryError wraps the cause
    if reason is not None:
        text = str(reason)
    text = re.sub(r"<urllib3[^>]*>:?\s*", "", text)
    return f"{name}: {text}" if text else name
