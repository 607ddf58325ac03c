"""trawl discoverer for Twitter serversets in ZooKeeper: ``[[serverset]]``.

Also the ZooKeeper machinery other ZooKeeper-based discoverers (``trawl-discovery-nerve``)
build on: `TreeWatcher` (watch subtrees from Trio), `ZooKeeperConfig` and
`ZooKeeperDiscoverer` (one target per member node), and `unmarshal` with `Struct` and
`MapOf` (decode member JSON exactly as Go's ``encoding/json`` does in Prometheus).
"""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import (
    ServersetConfig,
    ServersetDiscoverer,
    parse_serverset_member,
    sanitize_label_name,
)
from ._gojson import GoJSONError, MapOf, Struct, unmarshal
from ._treewatcher import Changes, TreeWatcher
from ._zookeeper import MemberError, ZooKeeperConfig, ZooKeeperDiscoverer, join_host_port

__all__ = [
    "Changes",
    "GoJSONError",
    "MapOf",
    "MemberError",
    "ServersetConfig",
    "ServersetDiscoverer",
    "Struct",
    "TreeWatcher",
    "ZooKeeperConfig",
    "ZooKeeperDiscoverer",
    "join_host_port",
    "parse_serverset_member",
    "sanitize_label_name",
    "unmarshal",
]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(ServersetDiscoverer)
