"""``[[influxdb]]``: Kapacitor's section, plus trawl's delivery keys."""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import urlsplit

import trawl
from pydantic import Field, SecretStr, field_validator, model_validator

DEFAULT_TIMEOUT = 10.0
_NAME = re.compile(r"^[-._\w]+$")


class InfluxDBConfig(trawl.SinkConfig):
    """One ``[[influxdb]]`` section.

    Kapacitor's keys for subscriptions, UDP and start-up (``startup-timeout``,
    ``disable-subscriptions``, ``subscription-*``, ``subscriptions``,
    ``excluded-subscriptions``, ``kapacitor-hostname``, ``http-port``, ``udp-*``) are
    accepted so that a ``kapacitor.conf`` loads, and unused: trawl only writes.
    """

    name: str = "default"
    urls: list[str] = Field(default_factory=lambda: ["http://localhost:8086"])
    username: str = ""
    password: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    org: str = ""
    bucket: str = ""
    api: Literal["v1", "v2"] = "v1"
    timeout: trawl.Duration = DEFAULT_TIMEOUT
    ssl_ca: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""
    insecure_skip_verify: bool = False
    create_database: bool = False
    batch_size: int = Field(5000, ge=1)
    flush_interval: trawl.Duration = 1.0
    gzip: bool = True
    # queue-size, spool-dir, spool-max-size, retry-*: every sink's (trawl.SinkConfig)
    # Kapacitor's, accepted and unused
    startup_timeout: trawl.Duration = 300.0
    disable_subscriptions: bool = False
    subscription_mode: Literal["cluster", "server"] = "cluster"
    subscription_protocol: Literal["http", "https", "udp"] = "http"
    subscription_path: str = ""
    subscriptions: dict[str, list[str]] = Field(default_factory=dict)
    excluded_subscriptions: dict[str, list[str]] = Field(default_factory=dict)
    subscriptions_sync_interval: trawl.Duration = 60.0
    kapacitor_hostname: str = ""
    http_port: int = 0
    udp_bind: str = ""
    udp_buffer: int = 1000
    udp_read_buffer: int = 0
    compression: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"name {value!r} must contain only letters, digits, '.', '-' "
                             "and '_'")
        return value

    @field_validator("urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("give at least one URL")
        out = []
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
            if parts.username or parts.password:
                raise ValueError("put credentials in username/password or token, not in urls")
            out.append(url.rstrip("/"))
        return out

    @model_validator(mode="after")
    def _rules(self) -> InfluxDBConfig:
        if bool(self.ssl_cert) != bool(self.ssl_key):
            raise ValueError("ssl-cert and ssl-key must be given together")
        for key, path in (("ssl-ca", self.ssl_ca), ("ssl-cert", self.ssl_cert),
                          ("ssl-key", self.ssl_key)):
            if path and not os.path.isfile(path):
                raise ValueError(f"{key} {path!r}: no such file")
        if self.token.get_secret_value() and self.username:
            raise ValueError("give either token or username/password, not both")
        if self.flush_interval <= 0:
            raise ValueError("flush-interval must be above zero")
        return self

    @property
    def request_timeout(self) -> float:
        """``timeout``, with Kapacitor's 0 (no timeout) meaning the 10 s default."""
        return self.timeout if self.timeout > 0 else DEFAULT_TIMEOUT
