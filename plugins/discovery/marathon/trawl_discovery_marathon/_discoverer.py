from __future__ import annotations

import base64
import json
import random
import re
import ssl
from collections.abc import Mapping
from typing import Any

import httpx
import trawl
import trio
from pydantic import Field, SecretStr, model_validator

APPS_PATH = "/v2/apps/?embed=apps.tasks"

META = "__meta_marathon_"
APP_LABEL = META + "app"
IMAGE_LABEL = META + "image"
TASK_LABEL = META + "task"
PORT_INDEX_LABEL = META + "port_index"
APP_LABEL_PREFIX = META + "app_label_"
PORT_MAPPING_LABEL_PREFIX = META + "port_mapping_label_"
PORT_DEFINITION_LABEL_PREFIX = META + "port_definition_label_"

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_ERROR_SNIPPET = 200


class MarathonConfig(trawl.DiscovererConfig):
    """``[[marathon]]``: Kapacitor's keys, plus basic auth and token files."""

    servers: list[str] = Field(default_factory=list)
    timeout: trawl.Duration = 30.0
    refresh_interval: trawl.Duration = 30.0
    bearer_token: SecretStr = SecretStr("")
    bearer_token_file: str = ""
    auth_token: SecretStr = SecretStr("")
    auth_token_file: str = ""
    basic_auth_username: str = ""
    basic_auth_password: SecretStr = SecretStr("")
    basic_auth_password_file: str = ""
    ssl_ca: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""
    ssl_server_name: str = ""
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _check(self) -> MarathonConfig:
        if self.enabled and not self.servers:
            raise ValueError("servers: at least one Marathon server URL is required")
        for server in self.servers:
            if not server.startswith(("http://", "https://")):
                raise ValueError(f"servers: {server!r} must start with http:// or https://")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if self.refresh_interval <= 0:
            raise ValueError("refresh-interval must be positive")
        methods = [name for name, given in (
            ("bearer-token", self.bearer_token.get_secret_value()),
            ("bearer-token-file", self.bearer_token_file),
            ("auth-token", self.auth_token.get_secret_value()),
            ("auth-token-file", self.auth_token_file),
            ("basic-auth-username", self.basic_auth_username),
        ) if given]
        if len(methods) > 1:
            raise ValueError(f"at most one of {', '.join(methods)} may be set")
        if self.basic_auth_password.get_secret_value() and self.basic_auth_password_file:
            raise ValueError("at most one of basic-auth-password and basic-auth-password-file "
                             "may be set")
        if (self.basic_auth_password.get_secret_value() or self.basic_auth_password_file) \
                and not self.basic_auth_username:
            raise ValueError("basic-auth-password needs basic-auth-username")
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("ssl-cert and ssl-key must be given together")
        return self


class MarathonFormatError(ValueError):
    """An answer of ``/v2/apps`` that is not the JSON Marathon sends."""


def sanitize_label_name(name: str) -> str:
    """Replace every character not valid in a label name by ``_``, as Prometheus does."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MarathonFormatError(f"{where}: expected an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MarathonFormatError(f"{where}: expected a list")
    return value


def _str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MarathonFormatError(f"{where}: expected a string")
    return value


def _port(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise MarathonFormatError(f"{where}: expected a port number")
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    labels = _obj(value, where)
    for key, val in labels.items():
        _str(val, f"{where}.{key}")
    return {k: v or "" for k, v in labels.items()}


def _port_mappings(mappings: list[Any], container_net: bool, where: str
                   ) -> tuple[list[int], list[dict[str, str]]]:
    ports, labels = [], []
    for i, raw in enumerate(mappings):
        m = _obj(raw, f"{where}[{i}]")
        labels.append(_labels(m.get("labels"), f"{where}[{i}].labels"))
        # On a container network the container port is reachable directly; otherwise
        # the host port (0: chosen by Mesos, found in the task's ports).
        key = "containerPort" if container_net else "hostPort"
        ports.append(_port(m.get(key), f"{where}[{i}].{key}"))
    return ports, labels


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def app_to_group(app: Any, where: str = "app") -> trawl.TargetGroup:
    """One Marathon app (with embedded tasks) as a target group whose source is its id.

    One target per task and port, as Prometheus's marathon_sd builds them. Ports come
    from ``container.portMappings``, else ``container.docker.portMappings``, else
    ``portDefinitions`` (their ``port`` only with ``requirePorts``), else the task's own
    ``ports``; a port of 0 is taken from the task's ``ports`` at the same index.
    """
    app = _obj(app, where)
    app_id = _str(app.get("id"), f"{where}.id")
    where = f"app {app_id!r}" if app_id else where
    container = _obj(app.get("container"), f"{where}: container")
    docker = _obj(container.get("docker"), f"{where}: container.docker")
    networks = _list(app.get("networks"), f"{where}: networks")
    container_net = bool(networks) and \
        _obj(networks[0], f"{where}: networks[0]").get("mode") == "container"

    app_ports: list[int] = []
    port_labels: list[dict[str, str]] = []
    prefix = ""
    mappings = _list(container.get("portMappings"), f"{where}: container.portMappings")
    docker_mappings = _list(docker.get("portMappings"),
                            f"{where}: container.docker.portMappings")
    definitions = _list(app.get("portDefinitions"), f"{where}: portDefinitions")
    if mappings:
        # Marathon 1.5 and later.
        app_ports, port_labels = _port_mappings(mappings, container_net,
                                                f"{where}: container.portMappings")
        prefix = PORT_MAPPING_LABEL_PREFIX
    elif docker_mappings:
        # Before Marathon 1.5.
        app_ports, port_labels = _port_mappings(docker_mappings, container_net,
                                                f"{where}: container.docker.portMappings")
        prefix = PORT_MAPPING_LABEL_PREFIX
    elif definitions:
        require_ports = app.get("requirePorts") is True
        for i, raw in enumerate(definitions):
            d = _obj(raw, f"{where}: portDefinitions[{i}]")
            port_labels.append(_labels(d.get("labels"), f"{where}: portDefinitions[{i}].labels"))
            # Without requirePorts the port is a service port; the task has the real one.
            port = _port(d.get("port"), f"{where}: portDefinitions[{i}].port")
            app_ports.append(port if require_ports else 0)
        prefix = PORT_DEFINITION_LABEL_PREFIX

    targets: list[Mapping[str, str]] = []
    for t, raw_task in enumerate(_list(app.get("tasks"), f"{where}: tasks")):
        tw = f"{where}: tasks[{t}]"
        task = _obj(raw_task, tw)
        task_ports = [_port(p, f"{tw}.ports") for p in _list(task.get("ports"), f"{tw}.ports")]
        host = _str(task.get("host"), f"{tw}.host")
        addresses = _list(task.get("ipAddresses"), f"{tw}.ipAddresses")
        if container_net and addresses:
            host = _str(_obj(addresses[0], f"{tw}.ipAddresses[0]").get("ipAddress"),
                        f"{tw}.ipAddresses[0].ipAddress")
        task_id = _str(task.get("id"), f"{tw}.id")
        ports = app_ports or task_ports
        for i, port in enumerate(ports):
            if port == 0 and len(task_ports) == len(ports):
                port = task_ports[i]
            target = {
                "__address__": _join_host_port(host, port),
                TASK_LABEL: task_id,
                PORT_INDEX_LABEL: str(i),
            }
            if port_labels:
                for name, value in port_labels[i].items():
                    target[prefix + sanitize_label_name(name)] = value
            # An empty label is an absent label (as in Prometheus).
            targets.append({k: v for k, v in target.items() if v})

    group_labels = {
        APP_LABEL: app_id,
        IMAGE_LABEL: _str(docker.get("image"), f"{where}: container.docker.image"),
    }
    for name, value in _labels(app.get("labels"), f"{where}: labels").items():
        group_labels[APP_LABEL_PREFIX + sanitize_label_name(name)] = value
    group_labels = {k: v for k, v in group_labels.items() if v}
    return trawl.group(app_id, targets, group_labels)


def apps_to_groups(data: Any) -> list[trawl.TargetGroup]:
    """The answer of ``/v2/apps/?embed=apps.tasks`` as one group per app."""
    apps = _list(_obj(data, "answer").get("apps"), "apps")
    return [app_to_group(app, f"apps[{i}]") for i, app in enumerate(apps)]


def _error_detail(response: httpx.Response) -> str:
    """Marathon's ``{"message": ...}`` of an error answer, or the start of the body."""
    text = response.text
    try:
        message = json.loads(text).get("message")
        if isinstance(message, str) and message:
            text = message
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:_ERROR_SNIPPET] + ("..." if len(text) > _ERROR_SNIPPET else "")


def _redact(url: str) -> str:
    """The URL without any ``user:password@`` part."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return scheme + sep + authority.rpartition("@")[2] + slash + path


def describe_http_error(exc: BaseException) -> str:
    """``ConnectError: <the innermost reason>`` (httpx's own message may be empty)."""
    return f"{type(exc).__name__}: {trawl.error_reason(exc)}"


def _ssl_context(config: MarathonConfig) -> ssl.SSLContext:
    return trawl.tls_context(ca=config.ssl_ca, cert=config.ssl_cert, key=config.ssl_key,
                             insecure=config.insecure_skip_verify)


async def _read_secret_file(path: str, what: str) -> str:
    try:
        return (await trio.Path(path).read_text()).strip()
    except OSError as exc:
        raise trawl.TrawlError(f"cannot read {what} {path}: {exc.strerror}") from None


class MarathonDiscoverer(trawl.RefreshDiscoverer):
    """Polls ``/v2/apps/?embed=apps.tasks``; one target group per app."""

    kind = "marathon"
    Config = MarathonConfig
    config: MarathonConfig

    def __init__(self, config: MarathonConfig) -> None:
        super().__init__(config)
        self._client: httpx.AsyncClient | None = None

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
            self._client = httpx.AsyncClient(verify=ctx, timeout=self.config.timeout,
                                             follow_redirects=True)
        return self._client

    async def _headers(self) -> dict[str, str]:
        c = self.config
        if c.bearer_token.get_secret_value():
            return {"Authorization": "Bearer " + c.bearer_token.get_secret_value()}
        if c.bearer_token_file:
            token = await _read_secret_file(c.bearer_token_file, "bearer-token-file")
            return {"Authorization": "Bearer " + token}
        if c.auth_token.get_secret_value():
            # DC/OS wants "token=", not "Bearer" (as Prometheus's auth_token).
            return {"Authorization": "token=" + c.auth_token.get_secret_value()}
        if c.auth_token_file:
            token = await _read_secret_file(c.auth_token_file, "auth-token-file")
            return {"Authorization": "token=" + token}
        if c.basic_auth_username:
            password = c.basic_auth_password.get_secret_value()
            if c.basic_auth_password_file:
                password = await _read_secret_file(c.basic_auth_password_file,
                                                   "basic-auth-password-file")
            pair = f"{c.basic_auth_username}:{password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}

    async def _fetch(self, server: str) -> list[trawl.TargetGroup]:
        url = server.rstrip("/") + APPS_PATH
        shown = _redact(url)
        client = await self._get_client()
        extensions = {}
        if self.config.ssl_server_name:
            extensions["sni_hostname"] = self.config.ssl_server_name
        headers = {"Accept": "application/json", **await self._headers()}
        try:
            with trio.fail_after(self.config.timeout):
                response = await client.get(url, headers=headers, extensions=extensions)
        except trio.TooSlowError:
            raise trawl.TrawlError(f"{shown}: no answer within {self.config.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise trawl.TrawlError(f"{shown}: {describe_http_error(exc)}") from None
        if not 200 <= response.status_code < 300:
            raise trawl.TrawlError(
                f"{shown}: HTTP {response.status_code}: {_error_detail(response)}")
        try:
            data = json.loads(response.content)
        except ValueError as exc:
            raise trawl.TrawlError(f"{shown}: invalid JSON: {exc}") from None
        try:
            return apps_to_groups(data)
        except MarathonFormatError as exc:
            raise trawl.TrawlError(f"{shown}: {exc}") from None

    async def refresh(self) -> list[trawl.TargetGroup]:
        # Servers in random order (Prometheus picks one at random); the first that
        # answers wins, so one server down does not fail the refresh.
        servers = list(self.config.servers)
        random.shuffle(servers)
        errors = []
        for server in servers:
            try:
                return await self._fetch(server)
            except trawl.TrawlError as exc:
                errors.append(str(exc))
        raise trawl.TrawlError("; ".join(errors))
