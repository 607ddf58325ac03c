"""AirBnB Nerve discovery: ``[[nerve]]``, labels as Prometheus's nerve_sd."""

from __future__ import annotations

from trawl_discovery_serverset import (
    GoJSONError,
    MemberError,
    Struct,
    ZooKeeperConfig,
    ZooKeeperDiscoverer,
    join_host_port,
    unmarshal,
)

PREFIX = "__meta_nerve_"

MEMBER = Struct({"host": str, "port": int, "name": str})
"""Prometheus's ``nerveMember`` struct."""


class NerveConfig(ZooKeeperConfig):
    """``[[nerve]]``: ``enabled``, ``id``, ``servers``, ``paths``, ``timeout``."""


def parse_nerve_member(data: bytes, path: str) -> dict[str, str]:
    """The labels of one nerve member node, exactly as Prometheus 2.42 builds them."""
    try:
        member = unmarshal(data, MEMBER)
    except GoJSONError as exc:
        raise MemberError(f"nerve member {path}: {exc}") from None
    return {
        "__address__": join_host_port(member["host"], member["port"]),
        PREFIX + "path": path,
        PREFIX + "endpoint_host": member["host"],
        PREFIX + "endpoint_port": str(member["port"]),
        PREFIX + "endpoint_name": member["name"],
    }


class NerveDiscoverer(ZooKeeperDiscoverer):
    """Watches nerve service paths in ZooKeeper; one target per member node."""

    kind = "nerve"
    Config = NerveConfig
    config: NerveConfig

    def parse_member(self, data: bytes, path: str) -> dict[str, str]:
        return parse_nerve_member(data, path)
