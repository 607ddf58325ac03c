{%- set c = cookiecutter -%}
{%- set p = c.__class_prefix -%}
"""The plugin's tests: the host finds it, its configuration, its behaviour under Trio."""

from __future__ import annotations

{% if c.kind == "discovery" -%}
import tomllib

{% endif -%}
import pytest
import trawl
import trio
import trio.testing
{%- if c.kind == "discovery" %}
from pydantic import ValidationError
from trawl.testing import MemorySink, exposition_target, loopback_clock, make_registry, run_host

from {{ c.__package_name }} import {{ p }}Discoverer as Discoverer
from {{ c.__package_name }} import {{ p }}DiscoveryConfig as Config
{%- elif c.kind == "sink" %}
from pydantic import ValidationError
from trawl.testing import exposition_target, loopback_clock, make_registry, run_host

from {{ c.__package_name }} import {{ p }}Sink as Sink
from {{ c.__package_name }} import {{ p }}SinkConfig as Config
{%- else %}
from pydantic import ValidationError
from trawl.testing import MemorySink, exposition_target, loopback_clock, make_registry, run_host

from {{ c.__package_name }} import {{ p }}Processor as Processor
from {{ c.__package_name }} import {{ p }}ProcessorConfig as Config
{%- endif %}

SCRAPER = """
[[scraper]]
  name = "job"
  db = "db"
  rp = "autogen"
  discoverer-service = "{% if c.kind == 'discovery' %}{{ c.__section }}{% else %}test-discovery{% endif %}"
  discoverer-id = "t"
  scrape-interval = "10s"
  scrape-timeout = "5s"
"""


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time for tests that scrape real loopback sockets (see `loopback_clock`)."""
    return loopback_clock()


def test_plugin_is_registered():
    plugins = trawl.list_plugins(trawl.get_plugin_manager())
    mine = next(p for p in plugins if p["name"] == "{{ c.__entry_point }}")
    assert mine["distribution"] == "{{ c.__dist_name }}"
    assert mine["kinds"] == ["{{ c.__section }}"]
{% if c.kind == "discovery" %}

def test_config_validates_and_rejects_bad_keys():
    config = Config.model_validate(
        {"id": "a", "ports": [9100], "refresh-interval": "1m"})
    assert (config.ports, config.refresh_interval) == ([9100], 60.0)
    with pytest.raises(ValidationError, match="portz"):
        Config.model_validate({"id": "a", "portz": [9100]})
    with pytest.raises(ValidationError, match="less than or equal to 65535"):
        Config.model_validate({"id": "a", "ports": [70000]})
    with pytest.raises(ValidationError, match="above zero"):
        Config.model_validate({"id": "a", "refresh-interval": "0s"})


def test_a_bad_key_in_toml_names_the_section_and_the_key():
    toml = '[[{{ c.__section }}]]\nid = "a"\nportz = [1]\n'
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config(tomllib.loads(toml), make_registry(), "trawl.toml")
    assert info.value.problems == [
        'trawl.toml: [[{{ c.__section }}]] #1 (id = "a"): unknown key "portz"']


async def test_reports_targets_every_refresh_interval(autojump_clock):
    config = Config.model_validate(
        {"id": "a", "ports": [9100, 9200], "labels": {"env": "test"}, "refresh-interval": "30s"})
    discoverer = Discoverer(config)
    manager = trawl.DiscoveryManager([discoverer])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        targets = manager.snapshot("{{ c.__section }}/a")
        await trio.sleep(95)
        nursery.cancel_scope.cancel()
    meta = "__meta_{{ c.__name_underscored }}_port"
    assert [t.labels for t in targets] == [
        {"env": "test", "__address__": "127.0.0.1:9100", meta: "9100"},
        {"env": "test", "__address__": "127.0.0.1:9200", meta: "9200"},
    ]
    assert discoverer.health.refreshes == 4  # at 0, 30, 60 and 90 s
    assert not discoverer.health.failing


async def test_discovered_targets_are_scraped(clock):
    MemorySink.clear()
    async with exposition_target("acme_requests_total 7\n") as address:
        port = address.rsplit(":", 1)[1]
        await run_host(f"""
[[{{ c.__section }}]]
  id = "t"
  ports = [{port}]
{SCRAPER}
[[memory-sink]]
  name = "mem"
  default = true
""", seconds=30)
    lines = MemorySink.lines("mem")
    assert f"acme_requests_total,instance={address},job=job value=7.0" in {
        line.rsplit(" ", 1)[0] for line in lines}
    ups = [line for line in lines if line.startswith("up,")]
    assert len(ups) == 3  # scraped every 10 s for 30 s
    assert all(" value=1.0 " in line for line in ups)
{%- elif c.kind == "sink" %}

def test_config_validates_and_rejects_bad_keys():
    config = Config.model_validate({"name": "out", "directory": "/tmp/x"})
    assert config.directory == "/tmp/x"
    with pytest.raises(ValidationError, match="directoryy"):
        Config.model_validate({"name": "out", "directory": "d", "directoryy": "d"})
    with pytest.raises(ValidationError, match="directory"):
        Config.model_validate({"name": "out"})
    with pytest.raises(ValidationError, match="must name a directory"):
        Config.model_validate({"name": "out", "directory": ""})


def test_a_bad_key_in_toml_names_the_section_and_the_key():
    data = {"{{ c.__section }}": [{"name": "out", "directory": "d", "directoryy": "d"}]}
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config(data, make_registry(), "trawl.toml")
    assert info.value.problems == [
        'trawl.toml: [[{{ c.__section }}]] #1 (name = "out"): unknown key "directoryy"']


def batch(db: str, *values: float) -> trawl.Batch:
    series = trawl.Series("requests", {"job": "x"})
    return trawl.Batch(db, "autogen", [(series, v, 1000 + i) for i, v in enumerate(values)])


async def test_writes_each_batch_to_its_database_file(autojump_clock, tmp_path):
    sink = Sink(Config(name="out", directory=str(tmp_path / "out")))
    await sink.open()
    await sink.write(batch("db", 1.0, 2.5))
    await sink.write(batch("db", 3.0))
    await sink.write(batch("other/db", 4.0))
    await sink.close()
    assert (tmp_path / "out" / "db.lp").read_text() == (
        "requests,job=x value=1.0 1000\nrequests,job=x value=2.5 1001\n"
        "requests,job=x value=3.0 1000\n")
    assert (tmp_path / "out" / "other_db.lp").read_text() == "requests,job=x value=4.0 1000\n"


async def test_failures_are_sink_errors(autojump_clock, tmp_path):
    (tmp_path / "file").write_text("")
    sink = Sink(Config(name="out", directory=str(tmp_path / "file")))
    with pytest.raises(trawl.SinkError, match="cannot create"):
        await sink.open()
    with pytest.raises(trawl.SinkError, match="cannot write") as info:
        await sink.write(batch("db", 1.0))
    assert info.value.retryable


async def test_scrapes_reach_the_sink(clock, tmp_path):
    async with exposition_target("acme_requests_total 7\n") as address:
        host = await run_host(f"""
[[test-discovery]]
  id = "t"
  targets = ["{address}"]
{SCRAPER}
[[{{ c.__section }}]]
  name = "out"
  default = true
  directory = "{tmp_path}"
""", seconds=30)
    lines = (tmp_path / "db.lp").read_text().splitlines()
    assert f"acme_requests_total,instance={address},job=job value=7.0" in {
        line.rsplit(" ", 1)[0] for line in lines}
    assert len([line for line in lines if line.startswith("up,")]) == 3  # every 10 s for 30 s
    assert host.sinks["out"].stats.write_errors == 0
{%- else %}

KIND = "{{ c.__section }}"


def processor(**keys: object) -> Processor:
    return Processor(Config.model_validate({"kind": KIND, **keys}))


def test_config_validates_and_rejects_bad_keys():
    config = Config.model_validate({"kind": KIND, "tags": {"dc": "eu"}})
    assert (config.tags, config.overwrite) == ({"dc": "eu"}, False)
    with pytest.raises(ValidationError, match="tagz"):
        Config.model_validate({"kind": KIND, "tagz": {"dc": "eu"}})
    with pytest.raises(ValidationError, match="at least one tag"):
        Config.model_validate({"kind": KIND, "tags": {}})


def test_a_bad_key_in_toml_names_the_scraper_and_the_key():
    data = {
        "test-discovery": [{"id": "t"}],
        "scraper": [{"name": "job", "db": "db", "rp": "autogen",
                     "discoverer-service": "test-discovery", "discoverer-id": "t",
                     "processors": [{"kind": KIND, "tags": {"dc": "eu"}, "tagz": {}}]}],
    }
    with pytest.raises(trawl.ConfigError) as info:
        trawl.parse_config(data, make_registry(), "trawl.toml")
    assert info.value.problems == [
        'trawl.toml: [[scraper]] #1 (name = "job"): [[scraper.processors]] #1 '
        f'(kind = "{KIND}"): unknown key "tagz"']


def test_adds_tags_and_keeps_existing_ones_unless_told():
    up = trawl.Series("up", {"job": "x", "dc": "us"})
    ((series, value, ts),) = processor(tags={"dc": "eu", "team": "a"}).process([(up, 1.0, 5)])
    assert (series.prefix, value, ts) == ("up,dc=us,job=x,team=a value=", 1.0, 5)
    ((series, _, _),) = processor(tags={"dc": "eu"}, overwrite=True).process([(up, 1.0, 5)])
    assert series.prefix == "up,dc=eu,job=x value="


def test_remembers_tagged_series_within_a_bound():
    tagger = processor(tags={"dc": "eu"})
    tagger.max_series = 2
    a, b, c = (trawl.Series(name, {}) for name in "abc")
    first = tagger.process([(a, 1.0, 1), (b, 1.0, 1)])
    second = tagger.process([(a, 2.0, 2)])
    assert second[0][0] is first[0][0]  # built once, then reused
    tagger.process([(c, 1.0, 3)])
    assert len(tagger._tagged) == 3
    tagger.process([(c, 1.0, 4)])  # over the bound: a and b are forgotten
    assert list(tagger._tagged) == [c]


async def test_scraped_points_are_tagged(clock):
    MemorySink.clear()
    async with exposition_target("acme_requests_total 7\n") as address:
        await run_host(f"""
[[test-discovery]]
  id = "t"
  targets = ["{address}"]
{SCRAPER}
  [[scraper.processors]]
    kind = "{{ c.__section }}"
    [scraper.processors.tags]
      dc = "eu"
[[memory-sink]]
  name = "mem"
  default = true
""", seconds=30)
    lines = MemorySink.lines("mem")
    assert f"acme_requests_total,dc=eu,instance={address},job=job value=7.0" in {
        line.rsplit(" ", 1)[0] for line in lines}
    assert len([line for line in lines if line.startswith("up,")]) == 3  # every 10 s for 30 s
    scraped = [line for line in lines if line.startswith("acme_requests_total,")]
    assert len(scraped) == 3
    assert all(",dc=eu," in line for line in scraped)
    # up and scrape_* describe the scrape itself: processors do not see them.
    assert not any(",dc=eu," in line for line in lines if line.startswith("up,"))
{%- endif %}
