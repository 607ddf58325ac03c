"""Configuration: Kapacitor's keys and defaults, and every error path naming file, section, key."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trawl
from trawl import ConfigError, load_config, parse_config, parse_duration
from trawl.testing import make_registry

DATA = Path(__file__).parent / "data"
TRAWL = [sys.executable, "-m", "trawl"]


@pytest.fixture(scope="module")
def registry() -> trawl.Registry:
    """The installed plugins (static, file, file sink, and whatever else is installed)."""
    return make_registry()


@pytest.fixture(scope="module")
def core_registry() -> trawl.Registry:
    """Only the three foundation plugins, whatever else happens to be installed."""
    from trawl_discovery_file import FileDiscoverer
    from trawl_discovery_static import StaticDiscoverer
    from trawl_sink_file import FileSink

    class Foundation:
        @trawl.hookimpl
        def trawl_register_discoverers(self, register):
            register(StaticDiscoverer)
            register(FileDiscoverer)

        @trawl.hookimpl
        def trawl_register_sinks(self, register):
            register(FileSink)

    return make_registry(Foundation(), load_entrypoints=False)


GOOD = """
[[static-discovery]]
  id = "nodes"
  targets = ["127.0.0.1:9100"]

[[scraper]]
  name = "node"
  db = "prom"
  rp = "autogen"
  discoverer-service = "static-discovery"
  discoverer-id = "nodes"

[[file-sink]]
  name = "out"
  default = true
  path = "out.lp"
"""


def write(tmp_path: Path, text: str, name: str = "trawl.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, registry: trawl.Registry) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    return info.value.problems


def test_good_config_has_kapacitor_defaults(tmp_path, core_registry):
    config = load_config(write(tmp_path, GOOD), core_registry)
    (scraper,) = config.scrapers
    assert scraper.type == "prometheus"
    assert scraper.scrape_interval == 60.0
    assert scraper.scrape_timeout == 10.0
    assert scraper.metrics_path == "/metrics"
    assert scraper.scheme == "http"
    assert config.sinks_of(scraper) == ["out"]
    assert config.summary().endswith("1 scraper(s), 1 discoverer(s), 1 sink(s) enabled")


def test_every_kapacitor_scraper_key_is_accepted(tmp_path, core_registry):
    text = GOOD.replace('  discoverer-id = "nodes"', '''  discoverer-id = "nodes"
  enabled = true
  type = "prometheus"
  scheme = "https"
  metrics-path = "/m"
  params = { module = ["http_2xx"], target = "x" }
  scrape-interval = "1m0s"
  scrape-timeout = "10s"
  username = "u"
  password = "s3cr3t-pw"
  bearer-token = ""
  ssl-ca = ""
  ssl-cert = ""
  ssl-key = ""
  ssl-server-name = "example"
  insecure-skip-verify = true
  proxy-url = "http://127.0.0.1:3128"
  blacklist = ["127.0.0.1:1"]''')
    (scraper,) = load_config(write(tmp_path, text), core_registry).scrapers
    assert scraper.params == {"module": ["http_2xx"], "target": ["x"]}
    assert scraper.password.get_secret_value() == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(scraper)


def test_misspelt_scraper_key_names_file_section_and_key(tmp_path, core_registry):
    found = problems(tmp_path, GOOD.replace("rp =", "scrape-intervall = \"1s\"\n  rp ="),
                     core_registry)
    assert found == [f'{tmp_path / "trawl.toml"}: [[scraper]] #1 (name = "node"): '
                     'unknown key "scrape-intervall"']


def test_wrong_type_in_a_plugin_section_names_its_id_and_key(tmp_path, core_registry):
    found = problems(tmp_path, GOOD.replace('targets = ["127.0.0.1:9100"]', "targets = 5"),
                     core_registry)
    assert len(found) == 1
    assert '[[static-discovery]] #1 (id = "nodes"): key "targets"' in found[0]
    assert str(tmp_path / "trawl.toml") in found[0]


def test_misspelt_key_in_a_sink_section(tmp_path, core_registry):
    found = problems(tmp_path, GOOD.replace('path = "out.lp"', 'pathh = "out.lp"'),
                     core_registry)
    assert found == [f'{tmp_path / "trawl.toml"}: [[file-sink]] #1 (name = "out"): '
                     'unknown key "pathh"']


def test_bad_duration(tmp_path, core_registry):
    found = problems(tmp_path, GOOD.replace('discoverer-id = "nodes"',
                                            'discoverer-id = "nodes"\n  scrape-interval = "1x"'),
                     core_registry)
    assert len(found) == 1
    assert 'key "scrape-interval": invalid duration' in found[0]


@pytest.mark.parametrize(("change", "message"), [
    (('name = "node"', 'name = ""'), "scraper config must be given a name"),
    (('db = "prom"', 'db = ""'), "scraper config must be given a db"),
    (('rp = "autogen"', 'rp = ""'), "scraper config must be given an rp"),
    (('db = "prom"', 'db = "prom"\n  type = "influx"'), 'type must be "prometheus"'),
    (('db = "prom"', 'db = "prom"\n  scrape-interval = "5s"\n  scrape-timeout = "10s"'),
     "scrape-timeout (10s) is greater than scrape-interval (5s)"),
])
def test_kapacitor_scraper_validation(tmp_path, core_registry, change, message):
    found = problems(tmp_path, GOOD.replace(*change), core_registry)
    assert len(found) == 1
    assert "[[scraper]] #1" in found[0]
    assert message in found[0]


def test_discoverer_id_must_match_an_enabled_discoverer(tmp_path, core_registry):
    found = problems(tmp_path, GOOD.replace('discoverer-id = "nodes"', 'discoverer-id = "nope"'),
                     core_registry)
    assert found == [f'{tmp_path / "trawl.toml"}: [[scraper]] #1 (name = "node"): key '
                     '"discoverer-id": no [[static-discovery]] with id "nope" is configured']
    disabled = GOOD.replace('\n  id = "nodes"', '\n  id = "nodes"\n  enabled = false')
    found = problems(tmp_path, disabled, core_registry)
    assert 'disabled [[static-discovery]] with id "nodes"' in found[0]


def test_scraper_needs_a_sink(tmp_path, core_registry):
    found = problems(tmp_path, GOOD.replace("default = true", "default = false"), core_registry)
    assert "no sink to write to" in found[0]
    found = problems(tmp_path, GOOD.replace('rp = "autogen"', 'rp = "autogen"\n  sinks = ["x"]'),
                     core_registry)
    assert 'key "sinks": no sink is named "x"' in found[0]


def test_known_section_without_its_plugin_says_what_to_install(tmp_path, core_registry):
    found = problems(tmp_path, GOOD + '\n[[consul]]\n  id = "c"\n  address = "127.0.0.1:8500"\n',
                     core_registry)
    assert found == [f"{tmp_path / 'trawl.toml'}: [[consul]]: no installed plugin reads this "
                     "section; install it with: pip install trawl-discovery-consul"]


def test_disabled_known_section_without_plugin_is_a_notice(tmp_path, core_registry):
    config = load_config(write(tmp_path, GOOD + '\n[[consul]]\n  enabled = false\n'),
                         core_registry)
    assert any("trawl-discovery-consul" in n for n in config.notices)


def test_unknown_sections_are_reported_once(tmp_path, core_registry):
    text = GOOD + "\n[[slack]]\n  enabled = false\n[[slack]]\n  enabled = false\n[smtp]\n  x = 1\n"
    config = load_config(write(tmp_path, text), core_registry)
    ignored = [n for n in config.notices if "ignoring" in n]
    assert ignored == [f"{tmp_path / 'trawl.toml'}: ignoring sections trawl does not use: "
                       "[slack], [smtp]"]


def test_invalid_toml(tmp_path, core_registry):
    found = problems(tmp_path, "[[scraper]\nname=1", core_registry)
    assert found[0].startswith(f"{tmp_path / 'trawl.toml'}: invalid TOML:")


def test_duplicate_ids_and_names(tmp_path, core_registry):
    text = GOOD + GOOD.replace("[[file-sink]]", "[[file-sink]]\n")
    found = problems(tmp_path, text, core_registry)
    assert any('id "nodes" is used twice' in p for p in found)
    assert any('name "out" is used twice' in p for p in found)
    assert any('name "node" is used twice' in p for p in found)


def test_every_problem_is_reported_at_once(tmp_path, core_registry):
    text = GOOD.replace('path = "out.lp"', 'pathh = "x"').replace("rp =", "bogus = 1\n  rp =")
    assert len(problems(tmp_path, text, core_registry)) == 2


def test_kapacitors_sample_configuration_loads(registry):
    config = load_config(DATA / "kapacitor.conf", registry)
    assert [s.name for s in config.scrapers] == ["myscraper"]
    assert config.enabled_scrapers() == []
    kinds = {cls.kind for cls, _ in config.discoverers}
    assert {"static-discovery", "file-discovery"} <= kinds
    ignored = [n for n in config.notices if "ignoring" in n]
    assert len(ignored) == 1
    assert "[smtp]" in ignored[0]
    assert "[static]" in ignored[0]


@pytest.mark.parametrize(("text", "seconds"), [
    ("1m0s", 60.0), ("10s", 10.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0),
    ("1.5s", 1.5), ("2h", 7200.0), ("100us", 1e-4), ("1µs", 1e-6), ("-5s", -5.0), (0, 0.0),
])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1x", "s", "1m0", "ten seconds", True, [1]])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (60, "1m0s"), (10, "10s"), (5400, "1h30m0s"), (0.5, "500ms"), (0, "0s"), (1.5, "1.5s"),
])
def test_format_duration_as_go(seconds, text):
    assert trawl.format_duration(seconds) == text


def test_parse_config_accepts_a_single_table(core_registry):
    data = {"static-discovery": {"id": "a", "targets": ["127.0.0.1:1"]}}
    config = parse_config(data, core_registry)
    assert [c.id for _, c in config.discoverers] == ["a"]


# ---------------------------------------------------------------- trawl check


def run_trawl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRAWL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_check_prints_a_one_line_summary(tmp_path):
    result = run_trawl("check", str(write(tmp_path, GOOD)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'trawl.toml'}: OK: 1 scraper(s), 1 discoverer(s), 1 sink(s) enabled"
    ]


def test_check_prints_every_problem_and_exits_1(tmp_path):
    text = GOOD.replace('path = "out.lp"', 'pathh = "x"').replace("rp =", "bogus = 1\n  rp =")
    result = run_trawl("check", str(write(tmp_path, text)))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert 'unknown key "bogus"' in lines[0]
    assert 'unknown key "pathh"' in lines[1]


def test_check_a_missing_file(tmp_path):
    result = run_trawl("check", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert "cannot read" in result.stdout


def test_check_kapacitor_conf(tmp_path):
    shutil.copy(DATA / "kapacitor.conf", tmp_path / "kapacitor.conf")
    result = run_trawl("check", str(tmp_path / "kapacitor.conf"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("OK: 0 scraper(s), 0 discoverer(s), 1 sink(s) enabled")
