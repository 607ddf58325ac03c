from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trawl
import trio
from pydantic import ValidationError
from trawl_discovery_static import StaticDiscoverer, StaticDiscoveryConfig


def test_plugin_is_registered():
    plugins = trawl.list_plugins(trawl.get_plugin_manager())
    mine = next(p for p in plugins if p["name"] == "discovery_static")
    assert mine["distribution"] == "trawl-discovery-static"
    assert mine["kinds"] == ["static-discovery"]


def test_config_rejects_bad_keys_and_targets():
    with pytest.raises(ValidationError, match="targetz"):
        StaticDiscoveryConfig.model_validate({"id": "a", "targetz": []})
    with pytest.raises(ValidationError, match="not a host:port"):
        StaticDiscoveryConfig.model_validate({"id": "a", "targets": ["http://x/metrics"]})


async def test_reports_its_targets_once():
    config = StaticDiscoveryConfig.model_validate(
        {"id": "web", "targets": ["127.0.0.1:1", "[::1]:2"], "labels": {"env": "prod"}})
    manager = trawl.DiscoveryManager([StaticDiscoverer(config)])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        targets = manager.snapshot("static-discovery/web")
        nursery.cancel_scope.cancel()
    assert [(t.source, t.labels) for t in targets] == [
        ("0", {"env": "prod", "__address__": "127.0.0.1:1"}),
        ("0", {"env": "prod", "__address__": "[::1]:2"}),
    ]


def test_trawl_discover_once(tmp_path):
    config = tmp_path / "trawl.toml"
    config.write_text('[[static-discovery]]\nid = "s"\ntargets = ["127.0.0.1:9100"]\n'
                      '[static-discovery.labels]\nregion = "us-east-1"\n')
    out = subprocess.run([sys.executable, "-m", "trawl", "discover", "-c", str(config), "--once"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert [json.loads(line) for line in out.splitlines()] == [{
        "discoverer": "static-discovery/s", "source": "0",
        "labels": {"__address__": "127.0.0.1:9100", "region": "us-east-1"},
    }]
