"""``[kubernetes]``: Kapacitor's keys plus ``kubeconfig``, ``namespaces`` and selectors."""

from __future__ import annotations

from typing import Any

import trawl
from pydantic import Field, SecretStr, field_validator, model_validator

ROLES = ("node", "pod", "service", "endpoints", "endpointslice", "ingress")
# Kapacitor's ``resource`` values, and the roles they name.
RESOURCE_ALIASES = {"endpoint": "endpoints", "endpointslices": "endpointslice",
                    "nodes": "node", "pods": "pod", "services": "service",
                    "ingresses": "ingress"}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubernetesConfig(trawl.DiscovererConfig):
    """One ``[kubernetes]`` table (or each entry of ``[[kubernetes]]``)."""

    in_cluster: bool = False
    api_servers: list[str] = Field(default_factory=list)
    token: SecretStr | None = None
    ca_path: str = ""
    namespace: str = ""
    resource: str = "pod"
    kubeconfig: str = ""
    namespaces: list[str] = Field(default_factory=list)
    label_selector: str = ""
    field_selector: str = ""
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    insecure_skip_verify: bool = False
    list_limit: int = Field(default=500, ge=0)
    request_timeout: trawl.Duration = 10.0
    watch_timeout: trawl.Duration = 300.0
    max_backoff: trawl.Duration = 30.0

    @field_validator("resource")
    @classmethod
    def _role(cls, value: str) -> str:
        role = RESOURCE_ALIASES.get(value.lower(), value.lower())
        if role not in ROLES:
            raise ValueError(f"{value!r} is not one of {', '.join(ROLES)} "
                             "(Kapacitor's \"endpoint\" is accepted for \"endpoints\")")
        return role

    @field_validator("api_servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r}: an API server must be an http:// or https:// URL")
        return [url.rstrip("/") for url in value]

    @field_validator("request_timeout", "watch_timeout", "max_backoff")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _source(self) -> KubernetesConfig:
        if self.in_cluster and self.kubeconfig:
            raise ValueError("in-cluster and kubeconfig cannot both be set")
        if self.enabled and not (self.in_cluster or self.kubeconfig or self.api_servers):
            raise ValueError("set api-servers, in-cluster = true or kubeconfig")
        return self

    @property
    def role(self) -> str:
        return self.resource

    @property
    def all_namespaces(self) -> list[str]:
        """The namespaces to watch, ``namespace`` first; empty means every namespace."""
        out: list[str] = []
        for ns in [self.namespace, *self.namespaces]:
            if ns and ns not in out:
                out.append(ns)
        return out

    def public(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")
