from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trawl
from pydantic import ValidationError
from trawl_sink_file import FileSink, FileSinkConfig

README = Path(__file__).parents[1] / "README.md"


def batch() -> trawl.Batch:
    up = trawl.Series("up", {"instance": "127.0.0.1:9100", "job": "node"})
    odd = trawl.Series("m e,a", {"k ey": "v,a=l ue", "empty": ""})
    return trawl.Batch("prom", "autogen", [(up, 1.0, 1000), (odd, 2.5, 1000), (up, 0.0, 2000)])


def test_plugin_is_registered():
    registry = trawl.collect(trawl.get_plugin_manager())
    assert registry.sinks["file-sink"] is FileSink
    assert registry.owners[("sinks", "file-sink")] == "sink_file"


def test_config_keys_defaults_and_errors():
    config = FileSinkConfig.model_validate({"name": "out"})
    assert (config.path, config.format, config.default) == ("-", "line-protocol", False)
    with pytest.raises(ValidationError, match="pathh"):
        FileSinkConfig.model_validate({"name": "out", "pathh": "x"})
    with pytest.raises(ValidationError, match="format"):
        FileSinkConfig.model_validate({"name": "out", "format": "csv"})


def test_readme_documents_every_key():
    documented = set(re.findall(r"^\| `([\w-]+)` \|", README.read_text(), flags=re.M))
    keys = {f.alias or n for n, f in FileSinkConfig.model_fields.items()}
    assert documented == keys


async def test_line_protocol_is_appended_with_escapes(tmp_path):
    path = tmp_path / "sub" / "out.lp"
    sink = FileSink(FileSinkConfig(name="out", path=str(path)))
    await sink.open()
    await sink.write(batch())
    await sink.write(trawl.Batch("prom", "", lines=["spooled,a=b value=3 3000"]))
    await sink.close()
    assert path.read_text().splitlines() == [
        "up,instance=127.0.0.1:9100,job=node value=1.0 1000",
        r"m\ e\,a,k\ ey=v\,a\=l\ ue value=2.5 1000",
        "up,instance=127.0.0.1:9100,job=node value=0.0 2000",
        "spooled,a=b value=3 3000",
    ]


async def test_jsonl(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = FileSink(FileSinkConfig(name="out", path=str(path), format="jsonl"))
    await sink.open()
    await sink.write(batch())
    await sink.close()
    first, second, _ = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {"db": "prom", "rp": "autogen", "measurement": "up",
                     "tags": {"instance": "127.0.0.1:9100", "job": "node"},
                     "fields": {"value": 1.0}, "time": 1000}
    assert second["tags"] == {"k ey": "v,a=l ue"}  # an empty tag is no tag


async def test_stdout(capsys):
    sink = FileSink(FileSinkConfig(name="out", path="-"))
    await sink.open()
    await sink.write(batch())
    await sink.close()
    assert capsys.readouterr().out.startswith("up,instance=127.0.0.1:9100,job=node value=1.0")


async def test_an_unwritable_path_is_a_retryable_sink_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    sink = FileSink(FileSinkConfig(name="out", path=str(tmp_path / "file" / "out.lp")))
    with pytest.raises(trawl.SinkError, match="cannot open") as info:
        await sink.open()
    assert info.value.retryable
