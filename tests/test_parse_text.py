"""The Prometheus text format 0.0.4 parser, offline.

The corpus cases are checked against what Prometheus 2.42 did with them (recorded in
``tests/data/parse/expected.json`` and re-checked live by ``test_parse_vs_prometheus.py``).
The other tests pin the details the scrape loop relies on: both routes (``parse`` plus
``parse_series`` on a cache miss, and ``parse_all``) agree, the fast path and the exact path
read the same, and Go's number syntax is kept.
"""

from __future__ import annotations

import json
import math

import pytest
from trawl._config import ScraperConfig
from trawl._parsing import (
    ParseError,
    PrometheusTextParser,
    _fast_text,
    _line_by_line,
    format_value,
    go_float,
)
from trawl._plugins import collect, get_plugin_manager
from trawl._scrape import ScrapePool

from tests.data.parse import (
    EXPECTED,
    load_cases,
    normalized_error,
    parser_kind,
    read_both,
    sorted_series,
)

EXPECTED_CASES = json.loads(EXPECTED.read_text())
TEXT_CASES = [c for c in load_cases() if parser_kind(c.content_type) == "prometheus-text"]
PAYLOAD = b"""\
# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000
# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\\\DIR\\\\FILE.TXT",\
error="Cannot find file:\\n\\"FILE.TXT\\""} 1.458255915e9
metric_without_timestamp_and_labels 12.47
something_weird{problem="division by zero"} +Inf 3982045
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"""


@pytest.fixture
def parser() -> PrometheusTextParser:
    return PrometheusTextParser()


@pytest.mark.parametrize("case", TEXT_CASES, ids=[c.name for c in TEXT_CASES])
def test_corpus_case_as_prometheus(case, parser) -> None:
    expected = EXPECTED_CASES[case.name]
    samples, error = read_both(parser, case.body)
    if not expected["up"]:
        assert samples is None
        assert normalized_error(error.split(": ", 1)[1]) == expected["error"]
        assert error.startswith("line ")
        return
    assert samples is not None, error
    assert len(samples) == expected["count"]
    if not case.countonly:
        got = sorted_series([n, labels, v] for n, labels, v, _ in samples)
        assert got == expected["series"]


def test_exposition_format_example(parser) -> None:
    """The example from Prometheus's exposition format documentation."""
    scraped = parser.parse(PAYLOAD)
    assert scraped.types == {"http_requests_total": "counter",
                             "rpc_duration_seconds": "summary"}
    assert parser.parse_all(PAYLOAD) == [
        ("http_requests_total", {"method": "post", "code": "200"}, 1027.0, 1395066363000),
        ("http_requests_total", {"method": "post", "code": "400"}, 3.0, 1395066363000),
        ("msdos_file_access_time_seconds",
         {"path": "C:\\DIR\\FILE.TXT", "error": 'Cannot find file:\n"FILE.TXT"'},
         1.458255915e9, None),
        ("metric_without_timestamp_and_labels", {}, 12.47, None),
        ("something_weird", {"problem": "division by zero"}, math.inf, 3982045),
        ("rpc_duration_seconds", {"quantile": "0.5"}, 4773.0, None),
        ("rpc_duration_seconds_sum", {}, 1.7560473e07, None),
        ("rpc_duration_seconds_count", {}, 2693.0, None),
    ]
    # The extra spaces are read by the exact path.
    assert _fast_text(PAYLOAD) is None
    assert read_both(parser, PAYLOAD)[0] is not None
    # The documentation's example has a negative timestamp, which Prometheus 2.42's lexer
    # (digits only) rejects, and so does trawl (corpus case text-ts-negative).
    with pytest.raises(ParseError, match="expected timestamp or new record"):
        parser.parse(PAYLOAD.replace(b" 3982045", b" -3982045"))


def test_series_text_is_the_cache_key(parser) -> None:
    body = b'a{x="1"} 1\nb 2\na{x="1"} 3 17\n'
    scraped = parser.parse(body)
    assert scraped.samples == [('a{x="1"}', 1.0, None), ("b", 2.0, None),
                               ('a{x="1"}', 3.0, 17)]
    assert parser.parse_series('a{x="1"}') == ("a", {"x": "1"})
    assert parser.parse_series("b") == ("b", {})


def test_fast_path_reads_the_common_layout(parser) -> None:
    body = (b"# HELP a_total Requests.\n# TYPE a_total counter\n"
            b'a_total{x="1",y="{id}"} 1e3 1700000000000\n# free comment\nb NaN\n')
    fast = _fast_text(body)
    assert fast is not None
    assert fast.types == {"a_total": "counter"}
    assert fast.samples[0] == ('a_total{x="1",y="{id}"}', 1000.0, 1700000000000)
    assert math.isnan(fast.samples[1][1])


def test_blank_lines_keep_the_fast_path(parser) -> None:
    body = b"\n\na 1\n\n\nb 2\n\n"
    assert _fast_text(body) == parser.parse(body)
    assert _fast_text(body) is not None
    assert read_both(parser, body)[0] == [("a", {}, "1", None), ("b", {}, "2", None)]
    # ... but a label value holding a blank line is read exactly.
    body = b'foo{a="x} 1\n\nb{c="} 2\n'
    assert _fast_text(body) is None
    assert parser.parse_all(body) == [("foo", {"a": "x} 1\n\nb{c="}, 2.0, None)]


@pytest.mark.parametrize("body", [
    b" a 1\n",                    # leading space
    b"a\t1\n",                    # tab separator
    b"a 1 \n",                    # trailing space
    b"#\tTYPE a gauge\na 1\n",    # unusual comment layout
    b"# TYPE a  gauge\na 1\n",
    b"# HELP  a x\na 1\n",
    b"a 1e400\n",                 # out of range
    b"a 1 99999999999999999999\n",
    b'a{x="1} 2\nb{y="} 3\n',    # a label value running on to the next line
    b"a 1\x00\n",
    b"# \xff\na 1\n",
])
def test_unusual_bodies_take_the_exact_path(body, parser) -> None:
    assert _fast_text(body) is None
    read_both(parser, body)  # and both routes still agree


def test_a_few_unusual_lines_are_read_one_by_one(parser) -> None:
    """Only the unusual lines go through the exact parser (the middle path)."""
    body = b'# TYPE a gauge\na{x="1"} 1\nb\t2\t17\n#  HELP c x\nc{ y = "2" } 3\n'
    assert _fast_text(body) is None
    middle = _line_by_line(body)
    assert middle is not None
    assert middle.samples == [('a{x="1"}', 1.0, None), ("b", 2.0, 17), ('c{ y = "2" }', 3.0, None)]
    assert middle.types == {"a": "gauge"}
    assert read_both(parser, body)[0] is not None
    with pytest.raises(ParseError, match=r"^line 3: expected timestamp or new record"):
        _line_by_line(b"a 1\nb 2\nc\t3 x\n")
    # Lines that cannot be read apart: the exact parser reads the whole body.
    assert _line_by_line(b'foo{a="x} 1\nb{c="} 2\n') is None
    assert _line_by_line(b"a 1\n\x00\nb 2\n") is None


def test_label_value_spanning_lines_is_one_sample(parser) -> None:
    """Each line looks like a sample, but Prometheus reads one label value across them."""
    body = b'foo{a="x} 1\nb{c="} 2\n'
    assert parser.parse_all(body) == [("foo", {"a": "x} 1\nb{c="}, 2.0, None)]
    assert parser.parse(body).samples == [('foo{a="x} 1\nb{c="}', 2.0, None)]


@pytest.mark.parametrize(("body", "message"), [
    (b"a 1\nb\n", 'line 2: expected value after metric, got "INVALID"'),
    (b"a 1\nb{x=1} 2\n", 'line 2: expected label value, got "INVALID"'),
    (b"a 1\n\n\nc 1 2 3\n", 'line 4: expected next entry after timestamp, got "TIMESTAMP"'),
    (b'# TYPE a gauge\n# TYPE b nope\n', 'line 2: invalid metric type "nope"'),
    (b"a 0x10\n", 'line 1: strconv.ParseFloat: parsing "0x10": invalid syntax'),
    (b'a{x="1",x="2"} 1\n', 'line 1: label name "x" is not unique: invalid sample'),
])
def test_errors_name_the_line_and_what_was_expected(body, message, parser) -> None:
    with pytest.raises(ParseError) as info:
        parser.parse_all(body)
    assert str(info.value) == message
    assert read_both(parser, body)[0] is None


@pytest.mark.parametrize("text", ["a{", "a{x=\"1\"", "a{x=\"1\"}b", "a b", " a", "a{x=\"1\"} ",
                                  "", "{}", 'a{x="\udcff"}'])
def test_parse_series_rejects_what_is_not_one_series(text, parser) -> None:
    with pytest.raises(ParseError):
        parser.parse_series(text)


@pytest.mark.parametrize(("raw", "value"), [
    (b"1", 1.0), (b"-0", -0.0), (b"+.5", 0.5), (b"5.", 5.0), (b"1E-3", 0.001),
    (b"Inf", math.inf), (b"-infinity", -math.inf), (b"iNf", math.inf), (b"1e-400", 0.0),
])
def test_go_float_accepts(raw, value) -> None:
    got = go_float(raw)
    assert got == value
    assert math.copysign(1, got) == math.copysign(1, value)


@pytest.mark.parametrize("raw", [
    b"1_000", b" 1", b"1 ", b"-nan", b"+NaN", b"infin", b"0x1p3", b"0x10", b"1e", b".",
    b"", "١".encode(), b"1e309", b"-1e309", b"nan(1)", b"++1",
])
def test_go_float_rejects_what_python_might_accept(raw) -> None:
    with pytest.raises(ValueError):
        go_float(raw)


@pytest.mark.parametrize(("value", "text"), [
    (1.0, "1"), (2.5, "2.5"), (-0.0, "-0"), (0.0, "0"), (1e-5, "0.00001"), (1e-7, "1e-07"),
    (1e21, "1e+21"), (1.5e21, "1.5e+21"), (1e20, "100000000000000000000"),
    (math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (5e-324, "5e-324"),
    (123456.789, "123456.789"), (-1.25e-6, "-0.00000125"),
])
def test_values_print_as_prometheus_api_does(value, text) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(("content_type", "kind"), [
    ("text/plain; version=0.0.4", "prometheus-text"),
    ("text/plain", "prometheus-text"),
    ("application/openmetrics-text; version=1.0.0", "openmetrics-text"),
    ("application/openmetrics-text;version=0.0.1;charset=utf-8", "openmetrics-text"),
    ("Application/OpenMetrics-Text", "openmetrics-text"),
    ("application/openmetrics-text; version", None),   # Go's mime parser fails: text
    ("application/openmetrics-text; a=1; a=2", None),  # duplicate parameter: text
    ("application/json", None),
    ("", None),
])
def test_parser_is_chosen_by_content_type(content_type, kind) -> None:
    registry = collect(get_plugin_manager(load_entrypoints=False))
    cls = registry.parser_for(content_type)
    assert (cls.kind if cls else None) == kind


def test_registered_parsers_make_prometheus_accept_header() -> None:
    registry = collect(get_plugin_manager(load_entrypoints=False))
    assert list(registry.parsers) == ["openmetrics-text", "prometheus-text"]
    pool = ScrapePool(ScraperConfig(name="s", db="db", rp="rp"), registry, lambda b: None)
    assert pool.accept == (
        "application/openmetrics-text;version=1.0.0,"
        "application/openmetrics-text;version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
