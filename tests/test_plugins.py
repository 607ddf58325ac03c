"""The plugin host: hookspecs, their documentation, entry points, ``trawl plugins``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import trawl
from trawl import hookspecs
from trawl.testing import registered

HOOKS_DOC = Path(__file__).parents[1] / "docs" / "plugins" / "hooks.md"
HOOKSPECS = sorted(n for n in dir(hookspecs) if n.startswith("trawl_"))


def doc_sections() -> dict[str, str]:
    text = HOOKS_DOC.read_text()
    parts = re.split(r"^## `(trawl_\w+)\(register\)`\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def example_plugin(hook: str) -> types.ModuleType:
    """The runnable example of a hook's documentation section, as a plugin module."""
    blocks = re.findall(r"```python\n(.*?)```", doc_sections()[hook], flags=re.S)
    assert blocks, f"{hook} has no python example"
    module = types.ModuleType(f"doc_example_{hook}")
    exec(compile(blocks[-1], str(HOOKS_DOC), "exec", dont_inherit=True), module.__dict__)
    return module


def test_every_hookspec_is_documented():
    assert sorted(doc_sections()) == HOOKSPECS


def test_every_hookspec_has_a_test_named_after_it():
    here = set(globals())
    assert [h for h in HOOKSPECS if f"test_{h}" not in here] == []


def kinds(pm) -> dict[str, str]:
    registry = trawl.collect(pm)
    return {kind: owner for (_, kind), owner in registry.owners.items()}


def test_trawl_register_discoverers():
    pm = trawl.get_plugin_manager(load_entrypoints=False)
    with registered(pm, example_plugin("trawl_register_discoverers"), "acme"):
        registry = trawl.collect(pm)
        assert registry.discoverers["acme"].__name__ == "AcmeDiscoverer"
        config = trawl.parse_config({"acme": [{"id": "a", "targets": ["127.0.0.1:1"]}]},
                                    registry)
        assert config.discoverers[0][1].refresh_interval == 30.0
    assert "acme" not in trawl.collect(pm).discoverers


async def test_trawl_register_parsers():
    pm = trawl.get_plugin_manager(load_entrypoints=False)
    with registered(pm, example_plugin("trawl_register_parsers"), "csv"):
        registry = trawl.collect(pm)
        parser_cls = registry.parser_for("text/csv; charset=utf-8")
        assert parser_cls is not None
        assert parser_cls().parse(b"a,1\nb,2.5\n").samples == [("a", 1.0, None),
                                                               ("b", 2.5, None)]
        assert registry.parser_for("text/plain; version=0.0.4") is trawl.PrometheusTextParser


def test_trawl_register_processors():
    pm = trawl.get_plugin_manager(load_entrypoints=False)
    with registered(pm, example_plugin("trawl_register_processors"), "add-tag"):
        registry = trawl.collect(pm)
        cls = registry.processors["add-tag"]
        processor = cls(cls.Config(kind="add-tag", key="dc", value="eu"))
        (point,) = processor.process([(trawl.Series("up", {"job": "x"}), 1.0, 5)])
        assert point[0].prefix == "up,dc=eu,job=x value="


async def test_trawl_register_sinks(capsys):
    pm = trawl.get_plugin_manager(load_entrypoints=False)
    with registered(pm, example_plugin("trawl_register_sinks"), "print"):
        cls = trawl.collect(pm).sinks["print-sink"]
        sink = cls(cls.Config(name="p"))
        await sink.write(trawl.Batch("db", "", [(trawl.Series("up", {"a": "b"}), 1.0, 7)]))
    assert capsys.readouterr().out == "up,a=b value=1.0 7\n"


def test_a_kind_registered_twice_is_an_error():
    class Twice:
        @trawl.hookimpl
        def trawl_register_sinks(self, register):
            register(trawl.testing.MemorySink)
            register(trawl.testing.MemorySink)

    pm = trawl.get_plugin_manager(load_entrypoints=False, plugins=[Twice()])
    with pytest.raises(trawl.PluginError, match="already registered"):
        trawl.collect(pm)


def test_a_class_without_kind_is_an_error():
    class NoKind(trawl.Sink):
        async def write(self, batch):
            pass

    class Plugin:
        @trawl.hookimpl
        def trawl_register_sinks(self, register):
            register(NoKind)

    pm = trawl.get_plugin_manager(load_entrypoints=False, plugins=[Plugin()])
    with pytest.raises(trawl.PluginError, match="has no 'kind'"):
        trawl.collect(pm)


def test_a_misspelt_hook_fails_loudly():
    class Typo:
        @trawl.hookimpl
        def trawl_register_sink(self, register):
            pass

    with pytest.raises(Exception, match="unknown hook"):
        trawl.get_plugin_manager(load_entrypoints=False, plugins=[Typo()])


def test_installed_plugins_are_found_through_entry_points():
    found = kinds(trawl.get_plugin_manager())
    assert found["static-discovery"] == "discovery_static"
    assert found["file-discovery"] == "discovery_file"
    assert found["file-sink"] == "sink_file"
    assert found["prometheus-text"] == "trawl.builtin.parsers"


def test_disable_plugins_by_entry_point_name(monkeypatch):
    monkeypatch.setenv("TRAWL_DISABLE_PLUGINS", "discovery_file, sink_file")
    found = kinds(trawl.get_plugin_manager())
    assert "file-discovery" not in found
    assert "file-sink" not in found
    assert "static-discovery" in found


def test_a_plugin_that_cannot_be_imported_does_not_take_the_others_down(tmp_path, monkeypatch):
    info = tmp_path / "trawl_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trawl-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[trawl]\nbroken = trawl_no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = trawl.get_plugin_manager()
    assert "No module named 'trawl_no_such_module'" in pm.broken["broken"]
    assert "file-sink" in kinds(pm)
    listed = {p["name"]: p for p in trawl.list_plugins(pm)}
    assert listed["broken"]["error"] == pm.broken["broken"]


def trawl_cli(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "trawl", *args], capture_output=True,
                            text=True, timeout=60, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_trawl_plugins_json():
    plugins = json.loads(trawl_cli("plugins", "--json"))
    by_dist = {p["distribution"]: p for p in plugins}
    assert by_dist["trawl-discovery-static"]["kinds"] == ["static-discovery"]
    assert by_dist["trawl-discovery-file"]["kinds"] == ["file-discovery"]
    assert by_dist["trawl-sink-file"]["kinds"] == ["file-sink"]
    assert by_dist["trawl"]["version"] == trawl.__version__
    assert all(isinstance(k, str) for p in plugins for k in p["kinds"])
    assert {"name", "distribution", "version", "kinds"} <= set(plugins[0])


def test_trawl_plugins_table_and_disabling():
    lines = trawl_cli("plugins", env={"TRAWL_DISABLE_PLUGINS": "sink_file"}).splitlines()
    assert any(line.startswith("trawl-discovery-static ") and "static-discovery" in line
               for line in lines)
    assert not any("file-sink" in line for line in lines)


def test_public_api():
    assert len(set(trawl.__all__)) == len(trawl.__all__)
    for name in trawl.__all__:
        assert getattr(trawl, name) is not None
    private = [n for n in trawl.__all__ if n.startswith("_") and n != "__version__"]
    assert private == []
