from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import trawl
import trio
from pydantic import field_validator, model_validator

META = "__meta_gce_"
SCOPE = "https://www.googleapis.com/auth/compute.readonly"
DEFAULT_ENDPOINT = "https://compute.googleapis.com"
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_TIMEOUT = 30.0
"""Seconds for one HTTP request to Google (token or instances page)."""
_REFRESH_TIMEOUT = 300.0
"""Seconds for a whole refresh, every page included."""
_MAX_PAGES = 10_000
"""A bound on the pages of one listing, so that a looping ``nextPageToken`` cannot hang us."""


class GCEConfig(trawl.DiscovererConfig):
    """``[[gce]]``: Kapacitor's keys plus ``endpoint`` and ``credentials-file``."""

    project: str = ""
    zone: str = ""
    filter: str = ""
    refresh_interval: trawl.Duration = 60.0
    port: int = 80
    tag_separator: str = ","
    endpoint: str = DEFAULT_ENDPOINT
    credentials_file: str = ""

    @field_validator("port")
    @classmethod
    def _port(cls, port: int) -> int:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not between 1 and 65535")
        return port

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _required(self) -> GCEConfig:
        # Kapacitor's sample section is disabled with every key empty: that must load.
        missing = [k for k, v in (("project", self.project), ("zone", self.zone)) if not v]
        if self.enabled and missing:
            raise ValueError("gce discovery needs " + " and ".join(missing))
        return self

    @property
    def api_base(self) -> str:
        """The Compute Engine v1 base URL (``<endpoint>/compute/v1/``)."""
        return f"{self.endpoint}/compute/v1/"


def sanitize(name: str) -> str:
    """A label name from a GCE key, as Prometheus's ``SanitizeLabelName``."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def instance_labels(inst: Mapping[str, Any], config: GCEConfig) -> dict[str, str] | None:
    """The target of one instance resource (JSON), as Prometheus 2.42 builds it; None for
    an instance without network interfaces."""
    interfaces = inst.get("networkInterfaces") or []
    if not interfaces:
        return None
    first = interfaces[0]
    private_ip = first.get("networkIP", "")
    labels = {
        META + "project": config.project,
        META + "zone": inst.get("zone", ""),
        META + "instance_id": str(inst.get("id", "")),
        META + "instance_name": inst.get("name", ""),
        META + "instance_status": inst.get("status", ""),
        META + "machine_type": inst.get("machineType", ""),
        META + "network": first.get("network", ""),
        META + "subnetwork": first.get("subnetwork", ""),
        META + "private_ip": private_ip,
        "__address__": f"{private_ip}:{config.port}",
    }
    for iface in interfaces:
        labels[META + "interface_ipv4_" + sanitize(iface.get("name", ""))] = \
            iface.get("networkIP", "")
    tags = (inst.get("tags") or {}).get("items") or []
    if tags:
        sep = config.tag_separator
        labels[META + "tags"] = sep + sep.join(tags) + sep
    for item in (inst.get("metadata") or {}).get("items") or []:
        if item.get("value") is None:
            continue
        labels[META + "metadata_" + sanitize(item.get("key", ""))] = item["value"]
    for key, value in (inst.get("labels") or {}).items():
        labels[META + "label_" + sanitize(key)] = value
    access = first.get("accessConfigs") or []
    if access and access[0].get("type") == "ONE_TO_ONE_NAT":
        labels[META + "public_ip"] = access[0].get("natIP", "")
    return {k: v for k, v in labels.items() if v}


def load_credentials(path: str) -> Any:
    """Credentials from a service-account or authorized-user JSON file.

    Only these two types are accepted: a file from elsewhere cannot make trawl run an
    external credential program. Errors name the file, never its contents.
    """
    from google.oauth2 import credentials as user_credentials
    from google.oauth2 import service_account

    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"credentials-file {path} was not found") from None
    except (OSError, ValueError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise ValueError(f"credentials-file {path}: {detail}") from None
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=[SCOPE])
        if kind == "authorized_user":
            return user_credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
                info, scopes=[SCOPE])
    except (ValueError, KeyError) as exc:
        raise ValueError(f"credentials-file {path}: not a valid {kind} file "
                         f"({type(exc).__name__})") from None
    raise ValueError(f"credentials-file {path}: type {kind!r} is not supported "
                     "(service_account or authorized_user)")


class InstancesClient:
    """Google's API client for one discoverer; `list` blocks (call it from a worker thread)."""

    def __init__(self, config: GCEConfig) -> None:
        import google.auth
        import google_auth_httplib2
        import httplib2
        from googleapiclient.discovery import build

        if config.credentials_file:
            credentials = load_credentials(config.credentials_file)
        else:
            credentials, _ = google.auth.default(scopes=[SCOPE])
        self.config = config
        http = google_auth_httplib2.AuthorizedHttp(credentials,
                                                   http=httplib2.Http(timeout=_TIMEOUT))
        self.service = build("compute", "v1", http=http, static_discovery=True,
                             cache_discovery=False,
                             client_options={"api_endpoint": config.api_base})

    def list(self) -> list[dict[str, Any]]:
        """Every instance of the project and zone matching ``filter``, all pages."""
        instances = self.service.instances()
        kwargs: dict[str, Any] = {"project": self.config.project, "zone": self.config.zone}
        if self.config.filter:
            kwargs["filter"] = self.config.filter
        request = instances.list(**kwargs)
        items: list[dict[str, Any]] = []
        for _ in range(_MAX_PAGES):
            if request is None:
                return items
            response = request.execute(num_retries=0)
            items.extend(response.get("items") or [])
            request = instances.list_next(request, response)
        raise RuntimeError(f"more than {_MAX_PAGES} pages of instances")

    def close(self) -> None:
        self.service.close()


class GCEDiscoverer(trawl.RefreshDiscoverer):
    """The instances of one project and zone, one target each."""

    kind = "gce"
    Config = GCEConfig

    def __init__(self, config: GCEConfig) -> None:
        super().__init__(config)
        self.config: GCEConfig = config
        self._client: InstancesClient | None = None

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections of the current client, if any."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    @property
    def source(self) -> str:
        return f"GCE_{self.config.project}_{self.config.zone}"

    async def refresh(self) -> list[trawl.TargetGroup]:
        try:
            with trio.fail_after(_REFRESH_TIMEOUT):
                if self._client is None:
                    self._client = await trio.to_thread.run_sync(
                        InstancesClient, self.config, abandon_on_cancel=True)
                items = await trio.to_thread.run_sync(self._client.list,
                                                      abandon_on_cancel=True)
        except Exception as exc:
            # Start afresh next time: credentials are read again, and a worker thread
            # abandoned by a timeout never shares its HTTP connection with a new one.
            if not isinstance(exc, trio.TooSlowError):
                self.close()
            self._client = None
            raise RuntimeError("error retrieving refresh targets from gce: "
                               + describe(exc)) from None
        targets = [t for t in (instance_labels(i, self.config) for i in items) if t]
        return [trawl.group(self.source, targets)]


def describe(exc: BaseException) -> str:
    """An error in one line, without request bodies or credential contents."""
    from googleapiclient.errors import HttpError

    if isinstance(exc, HttpError):
        return f"HTTP {exc.resp.status}: {exc.reason}"
    return " ".join(str(exc).split()) or type(exc).__name__
