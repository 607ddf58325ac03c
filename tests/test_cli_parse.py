"""``trawl parse PATH [--content-type CT]``: one JSON array per sample, or the first error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from trawl._cli import main

NODE = Path(__file__).parent / "data" / "node_exporter.prom"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list, str]:
    code = main(["parse", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_prints_name_labels_value_and_timestamp(tmp_path, capsys) -> None:
    path = tmp_path / "m.prom"
    path.write_bytes(b'# TYPE a counter\na_total{x="1",y="\\"q\\""} 1 1700000000000\n'
                     b"b 2.5\nc NaN\nd +Inf\ne -Inf\nf -0\ng 1e-7\nh 0.00001\ni 1e21\n")
    code, lines, err = run(capsys, str(path))
    assert (code, err) == (0, "")
    assert lines == [
        ["a_total", {"x": "1", "y": '"q"'}, "1", 1700000000000],
        ["b", {}, "2.5", None], ["c", {}, "NaN", None], ["d", {}, "+Inf", None],
        ["e", {}, "-Inf", None], ["f", {}, "-0", None], ["g", {}, "1e-07", None],
        ["h", {}, "0.00001", None], ["i", {}, "1e+21", None],
    ]


def test_openmetrics_by_content_type(tmp_path, capsys) -> None:
    path = tmp_path / "m.om"
    path.write_bytes(b'a_total 3 1.5 # {t="x"} 1\n# EOF\n')
    code, lines, _ = run(capsys, str(path), "--content-type",
                         "application/openmetrics-text; version=1.0.0")
    assert code == 0
    assert lines == [["a_total", {}, "3", 1500]]
    # The same body as the text format: "# EOF" is a comment there, the exemplar is not.
    code, _, err = run(capsys, str(path))
    assert code == 1
    assert "line 1: expected next entry after timestamp" in err


@pytest.mark.parametrize(("body", "message"), [
    (b"a 1\nb{x=\"1\",x=\"2\"} 2\n", 'line 2: label name "x" is not unique: invalid sample'),
    (b"a 1\n\nb 1 2 3\n", 'line 3: expected next entry after timestamp, got "TIMESTAMP"'),
    (b"a 1_0\n", "line 1: unsupported character in float"),
    (b"  a 1\n", 'line 1: invalid metric name or label names: {__name__="  a"}'),
])
def test_rejected_payload_exits_non_zero_with_prometheus_error(tmp_path, capsys, body,
                                                               message) -> None:
    path = tmp_path / "bad.prom"
    path.write_bytes(body)
    code, lines, err = run(capsys, str(path))
    assert code == 1
    assert lines == []
    assert err == f"error: {path}: {message}\n"


def test_first_error_in_body_order(tmp_path, capsys) -> None:
    """A bad label set on line 1 is reported before a bad value on line 2."""
    path = tmp_path / "bad.prom"
    path.write_bytes(b'a{x="1",x="2"} 1\nb zz\n')
    _, _, err = run(capsys, str(path))
    assert "line 1:" in err


def test_missing_file(tmp_path, capsys) -> None:
    code, _, err = run(capsys, str(tmp_path / "nope"))
    assert code == 1
    assert "cannot read" in err


def test_standard_input_through_the_installed_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "trawl", "parse", "-"], input=NODE.read_bytes(),
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) > 100
    assert all(isinstance(n, str) and isinstance(lab, dict) and isinstance(v, str)
               for n, lab, v, _ in lines)
