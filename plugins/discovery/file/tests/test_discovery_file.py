from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trawl
import trio
from pydantic import ValidationError
from trawl_discovery_file import FileDiscoverer, FileDiscoveryConfig


def test_plugin_is_registered():
    registry = trawl.collect(trawl.get_plugin_manager())
    assert registry.discoverers["file-discovery"] is FileDiscoverer
    assert registry.owners[("discoverers", "file-discovery")] == "discovery_file"


def test_config_keys_and_defaults():
    config = FileDiscoveryConfig.model_validate({"id": "f", "files": ["a/*.json"]})
    assert config.refresh_interval == 300.0
    with pytest.raises(ValidationError, match=r"must end in \.json, \.yml or \.yaml"):
        FileDiscoveryConfig.model_validate({"id": "f", "files": ["a/*.txt"]})
    with pytest.raises(ValidationError, match="refresh-intervall"):
        FileDiscoveryConfig.model_validate({"id": "f", "refresh-intervall": "1s"})


def write(path: Path, data: object) -> None:
    """Replace a file atomically, as operators (and Prometheus's docs) do."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(data if isinstance(data, str) else json.dumps(data))
    os.replace(tmp, path)


def addresses(manager: trawl.DiscoveryManager) -> list[str]:
    return sorted(t.labels["__address__"] for t in manager.snapshot("file-discovery/f"))


async def wait_for(manager: trawl.DiscoveryManager, want: list[str], within: float) -> float:
    """Wait (real time) until the discovered addresses are ``want``; return how long it took."""
    start = time.monotonic()
    with trio.fail_after(within):
        while addresses(manager) != want:
            await manager.wait_changed(manager.version)
    return time.monotonic() - start


async def test_json_and_yaml_groups_with_meta_filepath(tmp_path):
    write(tmp_path / "a.json", [{"targets": ["127.0.0.1:1", "127.0.0.1:2"],
                                 "labels": {"env": "prod"}},
                                {"targets": ["127.0.0.1:3"]}])
    (tmp_path / "b.yml").write_text("- targets: ['127.0.0.1:4']\n  labels:\n    team: db\n")
    config = FileDiscoveryConfig.model_validate(
        {"id": "f", "files": [str(tmp_path / "*.json"), str(tmp_path / "*.yml")]})
    manager = trawl.DiscoveryManager([FileDiscoverer(config)])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        targets = manager.snapshot("file-discovery/f")
        nursery.cancel_scope.cancel()
    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.yml")
    assert [(t.source, t.labels) for t in targets] == [
        (f"{a}:0", {"env": "prod", "__meta_filepath": a, "__address__": "127.0.0.1:1"}),
        (f"{a}:0", {"env": "prod", "__meta_filepath": a, "__address__": "127.0.0.1:2"}),
        (f"{a}:1", {"__meta_filepath": a, "__address__": "127.0.0.1:3"}),
        (f"{b}:0", {"team": "db", "__meta_filepath": b, "__address__": "127.0.0.1:4"}),
    ]


async def test_changes_are_seen_within_about_a_second(tmp_path):
    target = tmp_path / "t.json"
    write(target, [{"targets": ["127.0.0.1:1"]}])
    config = FileDiscoveryConfig.model_validate(
        {"id": "f", "files": [str(tmp_path / "*.json")], "refresh-interval": "5m"})
    manager = trawl.DiscoveryManager([FileDiscoverer(config)])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        assert addresses(manager) == ["127.0.0.1:1"]

        write(target, [{"targets": ["127.0.0.1:1", "127.0.0.1:2"]}])  # changed
        await wait_for(manager, ["127.0.0.1:1", "127.0.0.1:2"], within=1.5)

        write(tmp_path / "u.json", [{"targets": ["127.0.0.1:3"]}])  # added
        await wait_for(manager, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], within=1.5)

        os.remove(target)  # removed
        await wait_for(manager, ["127.0.0.1:3"], within=1.5)
        nursery.cancel_scope.cancel()


async def test_malformed_file_keeps_last_good_targets_and_reports(tmp_path):
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    write(bad, [{"targets": ["127.0.0.1:1"]}])
    write(good, [{"targets": ["127.0.0.1:2"]}])
    config = FileDiscoveryConfig.model_validate({"id": "f", "files": [str(tmp_path / "*.json")]})
    discoverer = FileDiscoverer(config)
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        assert not discoverer.health.failing

        write(bad, '[{"targets": ["127.0.0.1:1"], ')  # truncated JSON
        write(good, [{"targets": ["127.0.0.1:5"]}])  # the other file still updates
        await wait_for(manager, ["127.0.0.1:1", "127.0.0.1:5"], within=1.5)
        assert discoverer.health.failing
        assert str(bad) in discoverer.health.last_error
        assert "cannot parse" in discoverer.health.last_error

        write(bad, [{"targets": ["127.0.0.1:9"], "labels": {"x": 1}}])  # label not a string
        with trio.fail_after(1.5):
            while "must be a string" not in discoverer.health.last_error:
                await trio.sleep(0.05)
        assert addresses(manager) == ["127.0.0.1:1", "127.0.0.1:5"]

        write(bad, [{"targets": ["127.0.0.1:7"]}])  # fixed
        await wait_for(manager, ["127.0.0.1:5", "127.0.0.1:7"], within=1.5)
        assert not discoverer.health.failing
        nursery.cancel_scope.cancel()


def test_trawl_discover_prints_changes(tmp_path):
    target = tmp_path / "t.json"
    write(target, [{"targets": ["127.0.0.1:1"]}])
    config = tmp_path / "trawl.toml"
    config.write_text(f'[[file-discovery]]\nid = "f"\nfiles = ["{tmp_path}/*.json"]\n')
    with subprocess.Popen([sys.executable, "-m", "trawl", "discover", "-c", str(config)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first == {"discoverer": "file-discovery/f", "source": f"{target}:0",
                         "labels": {"__address__": "127.0.0.1:1",
                                    "__meta_filepath": str(target)}}
        write(target, [{"targets": ["127.0.0.1:2"]}])
        events = {json.loads(proc.stdout.readline())["event"] for _ in range(2)}
        assert events == {"added", "removed"}
        proc.terminate()
