"""Twitter serverset discovery: ``[[serverset]]``, labels as Prometheus's serverset_sd."""

from __future__ import annotations

import re

from ._gojson import GoJSONError, MapOf, Struct, unmarshal
from ._zookeeper import MemberError, ZooKeeperConfig, ZooKeeperDiscoverer, join_host_port

PREFIX = "__meta_serverset_"
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")

ENDPOINT = Struct({"Host": str, "Port": int})
MEMBER = Struct({
    "ServiceEndpoint": ENDPOINT,
    "AdditionalEndpoints": MapOf(ENDPOINT),
    "status": str,
    "shard": int,
})
"""Prometheus's ``serversetMember`` struct (JSON names as Go matches them)."""


class ServersetConfig(ZooKeeperConfig):
    """``[[serverset]]``: ``enabled``, ``id``, ``servers``, ``paths``, ``timeout``."""


def sanitize_label_name(name: str) -> str:
    """Prometheus's ``strutil.SanitizeLabelName``: every invalid character becomes ``_``."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def parse_serverset_member(data: bytes, path: str) -> dict[str, str]:
    """The labels of one serverset member node, exactly as Prometheus 2.42 builds them."""
    try:
        member = unmarshal(data, MEMBER)
    except GoJSONError as exc:
        raise MemberError(f"serverset member {path}: {exc}") from None
    endpoint = member["ServiceEndpoint"]
    labels = {
        "__address__": join_host_port(endpoint["Host"], endpoint["Port"]),
        PREFIX + "path": path,
        PREFIX + "endpoint_host": endpoint["Host"],
        PREFIX + "endpoint_port": str(endpoint["Port"]),
    }
    for name, extra in (member["AdditionalEndpoints"] or {}).items():
        clean = sanitize_label_name(name)
        labels[f"{PREFIX}endpoint_host_{clean}"] = extra["Host"]
        labels[f"{PREFIX}endpoint_port_{clean}"] = str(extra["Port"])
    labels[PREFIX + "status"] = member["status"]
    labels[PREFIX + "shard"] = str(member["shard"])
    return labels


class ServersetDiscoverer(ZooKeeperDiscoverer):
    """Watches serverset paths in ZooKeeper; one target per member node."""

    kind = "serverset"
    Config = ServersetConfig
    config: ServersetConfig

    def parse_member(self, data: bytes, path: str) -> dict[str, str]:
        return parse_serverset_member(data, path)
