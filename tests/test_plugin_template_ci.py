"""The plugin template, end to end, as a plugin author meets it.

One plugin of each kind is generated, and the registry discoverer of
``docs/plugins/walkthrough.md`` is built from the template and the page's code. All four
are installed in one fresh virtual environment next to the local core (and the file
sink): their tests pass under their own pytest configuration, ``trawl plugins --json``
lists them, and ``trawl run`` scrapes a real local target found by the generated
discoverer, through the generated processor, into the file sink and the generated sink.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter
from trawl.testing import ExpositionServer

from tests.servers import wait_until
from tests.test_cookiecutter import build_walkthrough_plugin

ROOT = Path(__file__).parents[1]
KINDS = ("discovery", "sink", "processor")
EXPOSITION = "# TYPE acme_requests_total counter\nacme_requests_total 7\n"


def run(args: list[str], *, timeout: float, cwd: Path | None = None,
        env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_generated_plugins_install_pass_their_tests_and_run(tmp_path):
    src = tmp_path / "src"
    plugins = {kind: Path(cookiecutter(
        str(ROOT / "cookiecutter"), no_input=True, output_dir=str(src),
        extra_context={"plugin_name": "acme", "kind": kind})) for kind in KINDS}
    registry = build_walkthrough_plugin(src)

    # A clean environment: nothing from the test run's own virtualenv leaks in.
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS")}
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=120, env=env)
    bin_dir = venv / "bin"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
         "-e", str(ROOT), "-e", str(ROOT / "plugins" / "sinks" / "file"),
         *(f"{plugins[kind]}[test]" for kind in KINDS), f"{registry}[test]"],
        timeout=400, env=env)

    # The tests pass, each plugin's under its own pyproject's pytest configuration.
    for plugin in [*plugins.values(), registry]:
        result = run([str(bin_dir / "python"), "-m", "pytest", "-p", "no:cacheprovider"],
                     cwd=plugin, timeout=180, env=env)
        assert f"rootdir: {plugin}" in result.stdout
        assert "configfile: pyproject.toml" in result.stdout
        (test_file,) = (plugin / "tests").glob("test_*.py")
        tests = re.findall(r"^(?:async )?def test_", test_file.read_text(), flags=re.M)
        summary = re.fullmatch(r"=+ (\d+) passed in [\d.]+s =+",
                               result.stdout.strip().splitlines()[-1])
        assert summary, result.stdout  # nothing failed, skipped or warned
        assert int(summary[1]) >= len(tests) > 0

    # trawl finds them through their entry points.
    listed = json.loads(run([str(bin_dir / "trawl"), "plugins", "--json"],
                            timeout=60, env=env).stdout)
    found = {p["name"]: p for p in listed}
    for kind in KINDS:
        assert found[f"{kind}_acme"]["distribution"] == f"trawl-{kind}-acme"
        assert found[f"{kind}_acme"]["version"] == "0.1.0"
        assert found[f"{kind}_acme"]["kinds"] == [f"acme-{kind}"]
    assert found["sink_file"]["kinds"] == ["file-sink"]
    assert found["discovery_registry"]["kinds"] == ["registry-discovery"]

    # trawl run: the generated discoverer finds a real target, the generated processor tags
    # its points, and they reach both the file sink and the generated sink.
    out, acme_dir = tmp_path / "out.lp", tmp_path / "acme-out"
    with ExpositionServer(EXPOSITION) as target:
        port = target.address.rsplit(":", 1)[1]
        config = tmp_path / "trawl.toml"
        config.write_text(f"""
[[acme-discovery]]
  id = "local"
  ports = [{port}]
  refresh-interval = "1s"

[[scraper]]
  name = "acme"
  db = "metrics"
  rp = "autogen"
  discoverer-service = "acme-discovery"
  discoverer-id = "local"
  scrape-interval = "1s"
  scrape-timeout = "1s"
  [[scraper.processors]]
    kind = "acme-processor"
    [scraper.processors.tags]
      dc = "eu"

[[file-sink]]
  name = "file"
  default = true
  path = "{out}"

[[acme-sink]]
  name = "acme"
  default = true
  directory = "{acme_dir}"
""")
        run([str(bin_dir / "trawl"), "check", str(config)], timeout=60, env=env)
        expected = f"acme_requests_total,dc=eu,instance={target.address},job=acme value=7.0 "

        def delivered(path: Path) -> int:
            if not path.exists():
                return 0
            return sum(line.startswith(expected) for line in path.read_text().splitlines())

        log = (tmp_path / "trawl.log").open("w")
        proc = subprocess.Popen([str(bin_dir / "trawl"), "run", "-c", str(config)],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: delivered(out) >= 2 and delivered(acme_dir / "metrics.lp") >= 2,
                       30, "two scrapes in both sinks")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    output = (tmp_path / "trawl.log").read_text()
    assert target.requests >= 2, output
    ups = [line for line in out.read_text().splitlines() if line.startswith("up,")]
    assert ups
    assert all(f"instance={target.address},job=acme value=1.0 " in u for u in ups)
    assert delivered(out) == delivered(acme_dir / "metrics.lp") == len(ups)
