"""``trawl run`` as a subprocess: static and file discovery, real HTTP targets, file sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from trawl.testing import ExpositionServer

from tests.servers import wait_until

DATA = Path(__file__).parent / "data"
NODE = (DATA / "node_exporter.prom").read_bytes()
NODE_SAMPLES = 507


def write_targets(path: Path, addresses: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": addresses, "labels": {"team": "files"}}]))
    os.replace(tmp, path)


def read_points(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def instances_with_up(points: list[dict]) -> Counter[str]:
    return Counter(p["tags"]["instance"] for p in points if p["measurement"] == "up")


@pytest.mark.slow
def test_run_scrapes_static_and_file_targets_as_they_come_and_go(tmp_path):
    servers = [ExpositionServer(NODE) for _ in range(3)]
    for s in servers:
        s.__enter__()
    static, file_a, file_b = servers
    sd_file = tmp_path / "targets.json"
    write_targets(sd_file, [file_a.address])
    out = tmp_path / "out.jsonl"
    config = tmp_path / "trawl.toml"
    config.write_text(f"""
[[static-discovery]]
  id = "static"
  targets = ["{static.address}"]
  [static-discovery.labels]
    team = "static"

[[file-discovery]]
  id = "files"
  files = ["{tmp_path}/*.json"]

[[scraper]]
  name = "node-static"
  db = "prom"
  rp = "autogen"
  discoverer-service = "static-discovery"
  discoverer-id = "static"
  scrape-interval = "1s"
  scrape-timeout = "1s"

[[scraper]]
  name = "node-files"
  db = "prom"
  rp = "autogen"
  discoverer-service = "file-discovery"
  discoverer-id = "files"
  scrape-interval = "1s"
  scrape-timeout = "1s"

[[file-sink]]
  name = "out"
  default = true
  path = "{out}"
  format = "jsonl"
""")
    proc = subprocess.Popen([sys.executable, "-m", "trawl", "run", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: instances_with_up(read_points(out))[file_a.address] >= 2, 15,
                   "the first file target to be scraped twice")
        assert static.requests >= 1

        write_targets(sd_file, [file_a.address, file_b.address])  # add a target
        added_at = time.time()
        wait_until(lambda: file_b.requests >= 2, 10, "the added target to be scraped")
        assert file_b.request_times[0] - added_at < 3.0

        write_targets(sd_file, [file_b.address])  # remove the first one
        removed_at = time.time()
        wait_until(lambda: file_b.requests >= 5, 15, "the remaining target to go on")
        late = [t for t in file_a.request_times if t > removed_at + 1.5]
        assert late == [], "a removed target was still scraped"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        for s in servers:
            s.__exit__(None, None, None)

    points = read_points(out)
    ups = [p for p in points if p["measurement"] == "up"]
    assert all(p["fields"]["value"] == 1.0 for p in ups), stderr
    by_instance = instances_with_up(points)
    assert by_instance[static.address] == static.requests
    assert by_instance[file_a.address] == file_a.requests
    assert by_instance[file_b.address] == file_b.requests

    # Every scrape's samples are there, mapped as Kapacitor maps them (measurement = metric
    # name, tags = labels, field "value", ms timestamps), with job and instance.
    cpu = [p for p in points if p["measurement"] == "node_cpu_seconds_total"
           and p["tags"]["instance"] == static.address]
    assert len(cpu) == 16 * static.requests
    sample = cpu[0]
    assert sample["db"] == "prom"
    assert sample["rp"] == "autogen"
    assert set(sample["tags"]) == {"cpu", "mode", "instance", "job", "team"}
    assert sample["tags"]["job"] == "node-static"
    assert sample["tags"]["team"] == "static"
    assert abs(sample["time"] / 1000 - time.time()) < 120
    file_points = [p for p in points if p["tags"].get("instance") == file_b.address]
    assert {p["tags"]["job"] for p in file_points} == {"node-files"}
    assert {p["tags"]["team"] for p in file_points} == {"files"}

    scraped = [p["fields"]["value"] for p in points
               if p["measurement"] == "scrape_samples_scraped"]
    assert set(scraped) == {float(NODE_SAMPLES)}
    payload_points = sum(1 for p in points if not p["measurement"].startswith(("up", "scrape_")))
    nan_free = NODE_SAMPLES - NODE.count(b" NaN\n")
    assert payload_points == nan_free * (static.requests + file_a.requests + file_b.requests)


def test_run_reports_a_bad_config_and_exits_1(tmp_path):
    config = tmp_path / "trawl.toml"
    config.write_text('[[scraper]]\nname = "x"\ndb = "d"\nrp = "r"\nscrape-intervall = "1s"\n')
    result = subprocess.run([sys.executable, "-m", "trawl", "run", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert 'unknown key "scrape-intervall"' in result.stderr


def test_embedded_default_scrapes_trawl_itself(tmp_path):
    """The README's first command: no configuration, something real is scraped."""
    proc = subprocess.Popen([sys.executable, "-m", "trawl", "run"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "trawl-out" / "metrics.lp"
    try:
        wait_until(lambda: out.exists() and "trawl_target_scrapes_total" in out.read_text(), 20,
                   "the embedded default to write its own metrics")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.read_text().splitlines()
    assert any(line.startswith("up,instance=127.0.0.1:9273,job=trawl") and " value=1.0 " in line
               for line in lines)
    assert any(line.startswith("process_resident_memory_bytes,") for line in lines)
