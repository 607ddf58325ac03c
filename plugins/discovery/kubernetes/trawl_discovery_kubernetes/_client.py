"""A small Kubernetes API client on httpx under Trio: list, watch, auth, TLS, failover."""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import trio
import yaml
from pydantic import SecretStr

from ._config import KubernetesConfig


class ApiError(Exception):
    """The API server answered with an error (its ``Status`` message is in the text)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class Gone(ApiError):
    """``410 Gone``: the resource version is too old; list again."""


class ConfigurationError(Exception):
    """The connection settings cannot be used (missing file, bad kubeconfig ...)."""


@dataclass
class TokenSource:
    """A bearer token, fixed or read from a file that may be rotated.

    A file token is read again when its modification time or size changes, and at once
    after a ``401``; the token itself never appears in errors or logs.
    """

    token: SecretStr | None = None
    path: str = ""
    _stamp: tuple[int, int] | None = field(default=None, repr=False)

    def _read(self, force: bool) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise ConfigurationError(f"cannot read the token file {self.path}: "
                                     f"{exc.strerror or exc}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if force or stamp != self._stamp or self.token is None:
            with open(self.path, encoding="utf-8") as f:
                self.token = SecretStr(f.read().strip())
            self._stamp = stamp

    async def header(self, force: bool = False) -> dict[str, str]:
        if self.path:
            await trio.to_thread.run_sync(self._read, force)
        if self.token is None or not self.token.get_secret_value():
            return {}
        return {"Authorization": f"Bearer {self.token.get_secret_value()}"}


@dataclass
class Connection:
    """Where and how to reach the API servers."""

    servers: list[str]
    ssl_context: ssl.SSLContext
    tokens: TokenSource


def _ssl_context(ca_path: str = "", ca_data: bytes = b"", insecure: bool = False,
                 cert: tuple[str, str] | None = None,
                 cert_data: tuple[bytes, bytes] | None = None) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_path or ca_data:
        try:
            ctx = ssl.create_default_context(
                cafile=ca_path or None, cadata=ca_data.decode() if ca_data else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the CA {ca_path or '(kubeconfig data)'}: "
                                     f"{exc}") from None
    else:
        ctx = ssl.create_default_context()
    if cert is not None:
        try:
            ctx.load_cert_chain(cert[0], cert[1])
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the client certificate {cert[0]}: "
                                     f"{exc}") from None
    elif cert_data is not None:
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for i, data in enumerate(cert_data):
                p = os.path.join(tmp, str(i))
                with open(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                    f.write(data)
                paths.append(p)
            try:
                ctx.load_cert_chain(paths[0], paths[1])
            except ssl.SSLError as exc:
                raise ConfigurationError(f"cannot load the kubeconfig client certificate: "
                                         f"{exc}") from None
    return ctx


def _kubeconfig(config: KubernetesConfig) -> Connection:
    path = os.path.expanduser(config.kubeconfig)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read kubeconfig {path}: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))

    def named(section: str, name: str) -> dict[str, Any]:
        for entry in data.get(section) or ():
            if entry.get("name") == name:
                return dict(entry.get(section[:-1]) or {})
        raise ConfigurationError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    def b64(value: str) -> bytes:
        return base64.b64decode(value)

    current = data.get("current-context")
    if not current:
        raise ConfigurationError(f"kubeconfig {path}: no current-context")
    context = named("contexts", current)
    cluster = named("clusters", str(context.get("cluster", "")))
    user = named("users", str(context.get("user", ""))) if context.get("user") else {}
    server = str(cluster.get("server", "")).rstrip("/")
    if not server:
        raise ConfigurationError(f"kubeconfig {path}: cluster {context.get('cluster')!r} "
                                 "has no server")
    cert = cert_data = None
    if user.get("client-certificate") and user.get("client-key"):
        cert = (rel(user["client-certificate"]), rel(user["client-key"]))
    elif user.get("client-certificate-data") and user.get("client-key-data"):
        cert_data = (b64(user["client-certificate-data"]), b64(user["client-key-data"]))
    ctx = _ssl_context(
        ca_path=rel(cluster["certificate-authority"]) if cluster.get("certificate-authority")
        else config.ca_path,
        ca_data=b64(cluster["certificate-authority-data"])
        if cluster.get("certificate-authority-data") else b"",
        insecure=bool(cluster.get("insecure-skip-tls-verify")) or config.insecure_skip_verify,
        cert=cert, cert_data=cert_data)
    tokens = TokenSource(config.token)
    if config.token is None:
        if user.get("token"):
            tokens = TokenSource(SecretStr(str(user["token"])))
        elif user.get("tokenFile"):
            tokens = TokenSource(path=rel(user["tokenFile"]))
    return Connection(config.api_servers or [server], ctx, tokens)


def connection(config: KubernetesConfig) -> Connection:
    """Build the connection settings from the config (blocking: reads files)."""
    if config.kubeconfig:
        return _kubeconfig(config)
    if config.in_cluster:
        sa = config.service_account_dir
        servers = config.api_servers
        if not servers:
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ConfigurationError("in-cluster: KUBERNETES_SERVICE_HOST is not set "
                                         "(set api-servers to run outside a pod)")
            servers = [f"https://{host if ':' not in host else f'[{host}]'}:{port}"]
        ca = config.ca_path or os.path.join(sa, "ca.crt")
        tokens = (TokenSource(config.token) if config.token is not None
                  else TokenSource(path=os.path.join(sa, "token")))
        if tokens.path:
            tokens._read(force=True)
        return Connection(servers, _ssl_context(ca, insecure=config.insecure_skip_verify),
                          tokens)
    return Connection(config.api_servers,
                      _ssl_context(config.ca_path, insecure=config.insecure_skip_verify),
                      TokenSource(config.token))


def _status_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (ValueError, UnicodeDecodeError):
        pass
    return response.reason_phrase or "error"


class ApiClient:
    """Requests to the first API server that answers; on a failure, the next one.

    Args:
      connection: Servers, TLS and token.
      request_timeout: Deadline of each list request, and of connecting for a watch.
    """

    def __init__(self, connection: Connection, request_timeout: float) -> None:
        self.connection = connection
        self.request_timeout = request_timeout
        self.current = 0
        self._http = httpx.AsyncClient(
            verify=connection.ssl_context,
            timeout=httpx.Timeout(request_timeout, read=None),
            follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    @property
    def server(self) -> str:
        return self.connection.servers[self.current % len(self.connection.servers)]

    def failover(self) -> None:
        """Use the next API server for the next request."""
        self.current = (self.current + 1) % len(self.connection.servers)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, path: str, params: dict[str, str], stream: bool) -> httpx.Response:
        url = self.server + path
        for attempt in (0, 1):
            headers = await self.connection.tokens.header(force=attempt > 0)
            request = self._http.build_request("GET", url, params=params, headers=headers)
            response = await self._http.send(request, stream=stream)
            if response.status_code == 401 and attempt == 0 and self.connection.tokens.path:
                # The token may just have been rotated: read it again and retry once.
                await response.aclose()
                continue
            break
        if response.status_code != 200:
            if stream:
                await response.aread()
            await response.aclose()
            message = _status_message(response)
            where = f"GET {self.server}{path}"
            if response.status_code == 410:
                raise Gone(f"{where}: 410 Gone: {message}", 410)
            raise ApiError(f"{where}: HTTP {response.status_code}: {message}",
                           response.status_code)
        return response

    async def list(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One list request, under ``request_timeout``."""
        with trio.fail_after(self.request_timeout):
            response = await self._send(path, params, stream=False)
        try:
            body = response.json()
        except ValueError as exc:
            raise ApiError(f"GET {self.server}{path}: invalid JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("items", []), list):
            raise ApiError(f"GET {self.server}{path}: not a list response")
        return body

    @asynccontextmanager
    async def watch(self, path: str, params: dict[str, str], timeout_seconds: int
                    ) -> AsyncIterator[AsyncGenerator[dict[str, Any], None]]:
        """A watch stream of events; the whole watch ends by its own deadline."""
        params = {**params, "watch": "1", "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        with trio.move_on_after(timeout_seconds + self.request_timeout):
            with trio.fail_after(self.request_timeout):
                response = await self._send(path, params, stream=True)
            try:
                async with aclosing(self._events(response, path)) as events:
                    yield events
            finally:
                await response.aclose()

    async def _events(self, response: httpx.Response, path: str
                      ) -> AsyncGenerator[dict[str, Any], None]:
        async with aclosing(cast(AsyncGenerator[str, None], response.aiter_lines())) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise ApiError(f"watch {self.server}{path}: invalid event: {exc}") from None
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise ApiError(f"watch {self.server}{path}: malformed event")
                yield event
