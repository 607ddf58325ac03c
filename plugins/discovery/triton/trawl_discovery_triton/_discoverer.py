from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import httpx
import trawl
import trio
from pydantic import Field, model_validator

META = "__meta_triton_"
GROUPS_LABEL = META + "groups"
MACHINE_ID_LABEL = META + "machine_id"
MACHINE_ALIAS_LABEL = META + "machine_alias"
MACHINE_BRAND_LABEL = META + "machine_brand"
MACHINE_IMAGE_LABEL = META + "machine_image"
SERVER_ID_LABEL = META + "server_id"

MAX_TIMEOUT = 30.0
_ERROR_SNIPPET = 200


class TritonConfig(trawl.DiscovererConfig):
    """``[[triton]]``: Kapacitor's keys, plus Prometheus's ``role`` and ``groups``."""

    account: str = ""
    dns_suffix: str = ""
    endpoint: str = ""
    port: int = 9163
    refresh_interval: trawl.Duration = 60.0
    version: int = 1
    role: Literal["container", "cn"] = "container"
    groups: list[str] = Field(default_factory=list)
    ssl_ca: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""
    ssl_server_name: str = ""
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _check(self) -> TritonConfig:
        if self.enabled:
            for key in ("account", "dns_suffix", "endpoint"):
                if not getattr(self, key):
                    raise ValueError(f"{key.replace('_', '-')} is required")
        if "/" in self.endpoint or "[" in self.endpoint:
            raise ValueError(f"endpoint: {self.endpoint!r} must be a host name, without "
                             "scheme or path (the port is the port key)")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if self.version < 1:
            raise ValueError(f"version: {self.version} must be 1 or more")
        if self.refresh_interval <= 0:
            raise ValueError("refresh-interval must be positive")
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("ssl-cert and ssl-key must be given together")
        return self


class TritonFormatError(ValueError):
    """A CMON discovery answer that is not the JSON CMON sends."""


def discovery_url(config: TritonConfig) -> str:
    """``https://<endpoint>:<port>/v<version>/discover`` (``/gz/discover`` for ``cn``)."""
    path = "discover" if config.role == "container" else "gz/discover"
    host = f"[{config.endpoint}]" if ":" in config.endpoint else config.endpoint
    url = f"https://{host}:{config.port}/v{config.version}/{path}"
    if config.groups:
        url += "?groups=" + urllib.parse.quote_plus(",".join(config.groups))
    return url


def _str(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TritonFormatError(f"{where}.{key}: expected a string")
    return value


def _entries(data: Any, key: str) -> list[Mapping[str, Any]]:
    if not isinstance(data, dict):
        raise TritonFormatError("expected a JSON object")
    entries = data.get(key)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise TritonFormatError(f"{key}: expected a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise TritonFormatError(f"{key}[{i}]: expected an object")
    return entries


def response_to_group(data: Any, config: TritonConfig, source: str) -> trawl.TargetGroup:
    """One CMON discovery answer as a single group, as Prometheus's triton_sd builds it.

    Each container (or compute node) is the target ``<uuid>.<dns-suffix>:<port>``.
    """
    targets = []
    if config.role == "container":
        for i, c in enumerate(_entries(data, "containers")):
            where = f"containers[{i}]"
            uuid = _str(c, "vm_uuid", where)
            target = {
                "__address__": f"{uuid}.{config.dns_suffix}:{config.port}",
                MACHINE_ID_LABEL: uuid,
                MACHINE_ALIAS_LABEL: _str(c, "vm_alias", where),
                MACHINE_BRAND_LABEL: _str(c, "vm_brand", where),
                MACHINE_IMAGE_LABEL: _str(c, "vm_image_uuid", where),
                SERVER_ID_LABEL: _str(c, "server_uuid", where),
            }
            groups = c.get("groups") or []
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise TritonFormatError(f"{where}.groups: expected a list of strings")
            if groups:
                target[GROUPS_LABEL] = "," + ",".join(groups) + ","
            targets.append(target)
    else:
        for i, cn in enumerate(_entries(data, "cns")):
            where = f"cns[{i}]"
            uuid = _str(cn, "server_uuid", where)
            targets.append({
                "__address__": f"{uuid}.{config.dns_suffix}:{config.port}",
                MACHINE_ID_LABEL: uuid,
                MACHINE_ALIAS_LABEL: _str(cn, "server_hostname", where),
            })
    # An empty label is an absent label (as in Prometheus).
    cleaned: list[Mapping[str, str]] = [{k: v for k, v in t.items() if v} for t in targets]
    return trawl.group(source, cleaned)


def _error_detail(response: httpx.Response) -> str:
    """CMON's (restify's) ``{"code", "message"}`` of an error answer, or the body's start."""
    text = response.text
    try:
        body = json.loads(text)
        parts = [body.get(k) for k in ("code", "message")]
        if any(isinstance(p, str) and p for p in parts):
            text = ": ".join(p for p in parts if isinstance(p, str) and p)
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:_ERROR_SNIPPET] + ("..." if len(text) > _ERROR_SNIPPET else "")


def describe_http_error(exc: BaseException) -> str:
    """``ConnectError: <the innermost reason>`` (httpx's own message may be empty)."""
    return f"{type(exc).__name__}: {trawl.error_reason(exc)}"


def _ssl_context(config: TritonConfig) -> ssl.SSLContext:
    return trawl.tls_context(ca=config.ssl_ca, cert=config.ssl_cert, key=config.ssl_key,
                             insecure=config.insecure_skip_verify)


class TritonDiscoverer(trawl.RefreshDiscoverer):
    """Polls CMON's discovery endpoint over TLS with a client certificate; one group."""

    kind = "triton"
    Config = TritonConfig
    config: TritonConfig

    def __init__(self, config: TritonConfig) -> None:
        super().__init__(config)
        self._client: httpx.AsyncClient | None = None
        self.url = discovery_url(config)

    @property
    def timeout(self) -> float:
        """Each request gives up after the refresh interval, and at most 30 s."""
        return min(self.config.refresh_interval, MAX_TIMEOUT)

    async def aclose(self) -> None:
        """Close the HTTP connections (`run` does this when it ends)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            try:
                ctx = await trio.to_thread.run_sync(_ssl_context, self.config)
            except (OSError, ssl.SSLError) as exc:
                raise trawl.TrawlError(f"TLS settings (ssl-ca, ssl-cert, ssl-key): {exc}") from None
            self._client = httpx.AsyncClient(verify=ctx, timeout=self.timeout)
        return self._client

    async def refresh(self) -> list[trawl.TargetGroup]:
        url = self.url
        client = await self._get_client()
        extensions = {}
        if self.config.ssl_server_name:
            extensions["sni_hostname"] = self.config.ssl_server_name
        try:
            with trio.fail_after(self.timeout):
                response = await client.get(url, headers={"Accept": "application/json"},
                                            extensions=extensions)
        except trio.TooSlowError:
            raise trawl.TrawlError(f"{url}: no answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            hint = ""
            if not self.config.ssl_cert:
                hint = " (no ssl-cert and ssl-key: CMON requires a client certificate)"
            raise trawl.TrawlError(f"{url}: {describe_http_error(exc)}{hint}") from None
        # Prometheus reads any answer's body; an error body then counts as "no
        # containers". trawl treats a non-2xx answer as a failure and keeps the targets.
        if not 200 <= response.status_code < 300:
            raise trawl.TrawlError(
                f"{url}: HTTP {response.status_code}: {_error_detail(response)}")
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise trawl.TrawlError(f"{url}: invalid JSON: {exc}") from None
        try:
            return [response_to_group(data, self.config, url)]
        except TritonFormatError as exc:
            raise trawl.TrawlError(f"{url}: {exc}") from None
