"""The plugin template: what it generates per kind, the names it derives, clean code.

The generated plugins' own tests, run in a fresh environment beside the local core, are in
``test_plugin_template_ci.py``.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trawl
import yaml
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter
from trawl.testing import make_registry

ROOT = Path(__file__).parents[1]
TEMPLATE = ROOT / "cookiecutter"
BIN = Path(sys.executable).parent

COMMON = {
    ".github/workflows/publish.yml",
    ".github/workflows/test.yml",
    ".gitignore",
    "LICENSE",
    "README.md",
    "pyproject.toml",
}
WALKTHROUGH = ROOT / "docs" / "plugins" / "walkthrough.md"
MODULE = {"discovery": "_discoverer.py", "sink": "_sink.py", "processor": "_processor.py"}


def generate(tmp_path: Path, **context: str) -> Path:
    return Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=context,
                             output_dir=str(tmp_path)))


def paths(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def build_walkthrough_plugin(src: Path) -> Path:
    """The walk-through's plugin: the template, then each file the page gives in full."""
    out = generate(src, plugin_name="registry", kind="discovery")
    page = WALKTHROUGH.read_text()
    files = re.findall(r"^```python\n# ([\w/.]+)\n(.*?)^```", page, flags=re.M | re.S)
    assert sorted(path for path, _ in files) == [
        "tests/test_discovery_registry.py", "trawl_discovery_registry/_discoverer.py"]
    for path, body in files:
        (out / path).write_text(f"# {path}\n{body}")
    (dependencies,) = re.findall(r"^dependencies = .*$", page, flags=re.M)
    pyproject = out / "pyproject.toml"
    text = pyproject.read_text()
    assert 'dependencies = ["trawl>=0.1"]' in text
    pyproject.write_text(text.replace('dependencies = ["trawl>=0.1"]', dependencies))
    return out


@pytest.mark.parametrize("kind", ["discovery", "sink", "processor"])
def test_generated_paths_per_kind(tmp_path, kind):
    out = generate(tmp_path, plugin_name="acme", kind=kind)
    assert out == tmp_path / f"trawl-{kind}-acme"
    assert paths(out) == COMMON | {
        f"trawl_{kind}_acme/__init__.py",
        f"trawl_{kind}_acme/{MODULE[kind]}",
        f"tests/test_{kind}_acme.py",
    }
    assert "{{" not in "".join(p.read_text() for p in out.rglob("*") if p.is_file()
                               and p.suffix != ".yml")


def test_derived_names_and_pyproject(tmp_path):
    out = generate(tmp_path, plugin_name="Acme_CMDB", kind="sink", description="Acme's CMDB",
                   author_name="Ada Lovelace", github_username="ada")
    assert out.name == "trawl-sink-acme-cmdb"
    project = tomllib.loads((out / "pyproject.toml").read_text())
    assert project["project"]["name"] == "trawl-sink-acme-cmdb"
    assert project["project"]["description"] == "Acme's CMDB"
    assert project["project"]["authors"] == [{"name": "Ada Lovelace"}]
    assert project["project"]["dependencies"] == ["trawl>=0.1"]
    assert "pytest-trio>=0.8" in project["project"]["optional-dependencies"]["test"]
    assert project["project"]["entry-points"]["trawl"] == {
        "sink_acme_cmdb": "trawl_sink_acme_cmdb"}
    assert project["project"]["urls"]["Homepage"] == "https://github.com/ada/trawl-sink-acme-cmdb"
    assert project["tool"]["setuptools"]["packages"] == ["trawl_sink_acme_cmdb"]
    pytest_config = project["tool"]["pytest"]["ini_options"]
    assert pytest_config["trio_mode"] is True
    assert "--import-mode=importlib" in pytest_config["addopts"]
    assert (out / "tests" / "test_sink_acme_cmdb.py").exists()
    assert "Ada Lovelace" in (out / "LICENSE").read_text()
    init = (out / "trawl_sink_acme_cmdb" / "__init__.py").read_text()
    assert "register(AcmeCmdbSink)" in init
    assert 'kind = "acme-cmdb-sink"' in (out / "trawl_sink_acme_cmdb" / "_sink.py").read_text()
    workflow_text = (out / ".github" / "workflows" / "test.yml").read_text()
    assert "${{ matrix.python-version }}" in workflow_text  # kept raw, for GitHub Actions
    workflow = yaml.safe_load(workflow_text)
    steps = [step.get("run", step.get("uses")) for step in workflow["jobs"]["test"]["steps"]]
    assert steps[-3:] == ["ruff check .", "trawl plugins", "python -m pytest"]
    publish = yaml.safe_load((out / ".github" / "workflows" / "publish.yml").read_text())
    assert publish["jobs"]["publish"]["steps"][-1]["uses"].startswith("pypa/gh-action-pypi")


@pytest.mark.parametrize("name", ["9lives", "acme corp!", "acme--x", ""])
def test_bad_plugin_names_are_refused(tmp_path, name):
    with pytest.raises(FailedHookException):
        generate(tmp_path, plugin_name=name)
    assert list(tmp_path.iterdir()) == []


def test_command_line_without_input(tmp_path):
    subprocess.run([str(BIN / "cookiecutter"), "--no-input", "cookiecutter",
                    "plugin_name=acme", "kind=discovery", "--output-dir", str(tmp_path)],
                   cwd=ROOT, check=True, timeout=60, capture_output=True)
    assert (tmp_path / "trawl-discovery-acme" / "trawl_discovery_acme" / "_discoverer.py").exists()
    subprocess.run([str(BIN / "cookiecutter"), "--no-input", str(TEMPLATE),
                    "plugin_name=other", "--output-dir", str(tmp_path)],
                   check=True, timeout=60, capture_output=True)
    assert (tmp_path / "trawl-discovery-other").is_dir()  # discovery is the default kind


def test_generated_code_is_ruff_clean(tmp_path):
    for kind in MODULE:
        generate(tmp_path, plugin_name="acme", kind=kind)
        generate(tmp_path, plugin_name="acme-cmdb-inventory", kind=kind)
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_walkthrough_code_is_ruff_clean(tmp_path):
    out = build_walkthrough_plugin(tmp_path)
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=out,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def import_generated(tmp_path, monkeypatch):
    """Import a generated package from its directory (not installed), then forget it."""
    imported: list[str] = []

    def load(out: Path, package: str):
        monkeypatch.syspath_prepend(str(out))
        imported.append(package)
        return importlib.import_module(package)

    yield load
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in imported):
            del sys.modules[name]


def readme_keys(readme: str) -> set[str]:
    return set(re.findall(r"^\| `([\w-]+)` \|", readme, flags=re.M))


@pytest.mark.parametrize("kind", ["discovery", "sink", "processor"])
def test_readme_documents_every_key_and_the_hooks_register_the_class(
        tmp_path, import_generated, kind):
    out = generate(tmp_path, plugin_name="widget", kind=kind)
    module = import_generated(out, f"trawl_{kind}_widget")
    registry = make_registry(module, load_entrypoints=False)
    category = {"discovery": "discoverers", "sink": "sinks", "processor": "processors"}[kind]
    cls = getattr(registry, category)[f"widget-{kind}"]
    assert cls.__module__.startswith(f"trawl_{kind}_widget.")
    keys = {field.alias or name for name, field in cls.Config.model_fields.items()}
    assert readme_keys((out / "README.md").read_text()) == keys
    assert issubclass(cls, {"discovery": trawl.Discoverer, "sink": trawl.Sink,
                            "processor": trawl.Processor}[kind])
