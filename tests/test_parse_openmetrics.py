"""The OpenMetrics 1.0 text parser, offline.

Corpus cases are checked against Prometheus 2.42's recorded results
(``tests/data/parse/expected.json``, re-checked live by ``test_parse_vs_prometheus.py``).
"""

from __future__ import annotations

import json

import pytest
from trawl._openmetrics import OpenMetricsParser, _fast_openmetrics
from trawl._parsing import ParseError

from tests.data.parse import (
    EXPECTED,
    load_cases,
    normalized_error,
    parser_kind,
    read_both,
    sorted_series,
)

EXPECTED_CASES = json.loads(EXPECTED.read_text())
OM_CASES = [c for c in load_cases() if parser_kind(c.content_type) == "openmetrics-text"]
PAYLOAD = b"""\
# TYPE acme_http_router_request_seconds summary
# UNIT acme_http_router_request_seconds seconds
# HELP acme_http_router_request_seconds Latency though all of ACME's HTTP request router.
acme_http_router_request_seconds_sum{path="/api/v1",method="GET"} 9036.32
acme_http_router_request_seconds_count{path="/api/v1",method="GET"} 807283.0
acme_http_router_request_seconds_created{path="/api/v1",method="GET"} 1605281325.0
# TYPE go_goroutines gauge
go_goroutines 69
# TYPE process_cpu_seconds counter
# UNIT process_cpu_seconds seconds
process_cpu_seconds_total 4.20072246e+06 1605281325.5
# TYPE foo histogram
foo_bucket{le="0.01"} 0
foo_bucket{le="0.1"} 8 # {} 0.054
foo_bucket{le="1"} 11 # {trace_id="KOO5S4vxi0o"} 0.67
foo_bucket{le="+Inf"} 17 # {trace_id="oHg5SJYRHA0"} 9.8 1520879607.789
foo_count 17
foo_sum 324789.3
# EOF
"""


@pytest.fixture
def parser() -> OpenMetricsParser:
    return OpenMetricsParser()


@pytest.mark.parametrize("case", OM_CASES, ids=[c.name for c in OM_CASES])
def test_corpus_case_as_prometheus(case, parser) -> None:
    expected = EXPECTED_CASES[case.name]
    samples, error = read_both(parser, case.body)
    if not expected["up"]:
        assert samples is None
        assert normalized_error(error.split(": ", 1)[1]) == expected["error"]
        return
    assert samples is not None, error
    assert len(samples) == expected["count"]
    if not case.countonly:
        got = sorted_series([n, labels, v] for n, labels, v, _ in samples)
        assert got == expected["series"]


def test_openmetrics_example(parser) -> None:
    scraped = parser.parse(PAYLOAD)
    assert _fast_openmetrics(PAYLOAD) is not None
    assert scraped.types == {"acme_http_router_request_seconds": "summary",
                             "go_goroutines": "gauge", "process_cpu_seconds": "counter",
                             "foo": "histogram"}
    samples = parser.parse_all(PAYLOAD)
    assert samples[4] == ("process_cpu_seconds_total", {}, 4.20072246e06, 1605281325500)
    assert samples[8] == ("foo_bucket", {"le": "+Inf"}, 17.0, None)  # exemplar ignored
    assert len(samples) == 11
    assert read_both(parser, PAYLOAD)[0] is not None


@pytest.mark.parametrize(("body", "message"), [
    (b"a 1\n", "line 1: data does not end with # EOF"),
    (b"a 1\n# EOF\nb 2\n", "line 3: unexpected data after # EOF"),
    (b"a 1\n\n# EOF\n", 'line 2: "INVALID" "\\n" is not a valid start token'),
    (b"a 1 # {x=\"y\"} 1\n# EOF\n", "line 1: metric name a does not support exemplars"),
    (b"a_total 1 # {x=\"y\"} 1 NaN\n# EOF\n", "line 1: invalid exemplar timestamp"),
    (b"# UNIT a_bytes seconds\n# EOF\n", 'line 1: unit not a suffix of metric "a_bytes"'),
    (b"# TYPE a untyped\n# EOF\n", 'line 1: invalid metric type "untyped"'),
    (b'a{x="1",} 1\n# EOF\n', 'line 1: expected label name, got "BCLOSE"'),
    (b'a{x="1"y="2"} 1\n# EOF\n', 'line 1: expected comma, got "LNAME"'),
    (b'a{x="1" y="2"} 1\n# EOF\n', 'line 1: expected comma or left brace, got "INVALID"'),
    (b"# random\n# EOF\n", 'line 1: "INVALID" "r" is not a valid start token'),
    (b"# HELx a\n# EOF\n", 'line 1: "INVALID" "x" is not a valid start token'),
])
def test_errors_name_the_line_and_what_was_expected(body, message, parser) -> None:
    with pytest.raises(ParseError) as info:
        parser.parse_all(body)
    assert str(info.value) == message
    assert read_both(parser, body)[0] is None


@pytest.mark.parametrize("body", [
    b"a 1\n# EOF\n",
    b"a 1\n# EOF",
    b"# EOF\n",
    b'a_total{x="1"} 1 17.5 # {t="x"} 2 3\n# EOF\n',
])
def test_fast_path_takes_the_usual_layout(body, parser) -> None:
    assert _fast_openmetrics(body) is not None
    assert read_both(parser, body)[0] is not None


@pytest.mark.parametrize("body", [
    b"a 1 1e3\n# EOF\n",               # timestamp exponent
    b"a 1\n# EOF \n",                  # not quite EOF
    b'a{x="#"} 1 # {t="x"} 2\n# EOF\n',
    b"a 1\x00\n# EOF\n",
])
def test_unusual_bodies_take_the_exact_path(body, parser) -> None:
    assert _fast_openmetrics(body) is None
    read_both(parser, body)


def test_timestamps_are_seconds_truncated_to_milliseconds(parser) -> None:
    body = b"a 1 1.0019\nb 1 -1.5\nc 1 1e3\nd 1 1e300\n# EOF\n"
    assert [s[3] for s in parser.parse_all(body)] == [1001, -1500, 1_000_000, -(2**63)]


def test_parse_series_rejects_text_format_only_syntax(parser) -> None:
    for text in ['a{x="1",}', 'a {x="1"}', 'a{x="1"y="2"}', "a{,}", 'a{x="a\nb"}']:
        with pytest.raises(ParseError):
            parser.parse_series(text)
    assert parser.parse_series('a{x="1",y="\\"q\\""}') == ("a", {"x": "1", "y": '"q"'})
