"""Property-based tests of both parsers (hypothesis).

- On arbitrary bytes, and on exposition-like bodies built from fragments and near-valid
  lines, a parser raises nothing but `ParseError`.
- On those bodies the scrape loop's route (the fast path's ``parse`` plus ``parse_series``
  per series text) and the exact route (``parse_all``, the reimplementation of Prometheus's
  lexer and parser) agree: same verdict, same samples. So the fast path is only a shortcut.
- Canonical renderings of random samples read back exactly.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trawl._openmetrics import OpenMetricsParser
from trawl._parsing import ParseError, Parser, PrometheusTextParser, format_value

from tests.data.parse import read_both

PARSERS: list[Parser] = [PrometheusTextParser(), OpenMetricsParser()]
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = [
    b"a", b"b_c", b":x", b"foo_total", b"foo_bucket", b"{", b"}", b"=", b",", b'"', b"\\",
    b'\\"', b"\\n", b"\\\\", b" ", b"  ", b"\t", b"\n", b"\n", b"\n", b"#", b"# ", b"# HELP ",
    b"# TYPE ", b"# UNIT ", b"# EOF", b"# EOF\n", b" # {", b"counter", b" gauge", b"untyped",
    b"unknown", b"1", b"-0", b"2.5", b"e", b"E+3", b"NaN", b"nan", b"Inf", b"+Inf", b"-inf",
    b".", b"0x1", b"_", b'x="y"', b'le="+Inf"', b"\x00", b"\r", "é".encode(), b"\xff",
    b"1700000000", b"1700000000.5", b"9223372036854775808", b"1e400",
]
NAMES = st.sampled_from(["a", "foo_total", "h_bucket", ":c", "x1", "up_", "a-b", "1a", ""])
VALUES = st.sampled_from(["1", "-0", "2.5e-3", "NaN", "+Inf", "-Inf", "1e400", "0x10",
                          "1_0", "abc", "", ".5", "5."])
LABEL_VALUES = st.lists(st.sampled_from([*'ab "\\n{}=,#é\x00\t', "\\\\", '\\"']),
                        max_size=6).map("".join)


@st.composite
def sample_line(draw: st.DrawFn) -> bytes:
    name = draw(NAMES)
    labels = draw(st.lists(st.tuples(st.sampled_from(["x", "y", "le", "__name__", "_"]),
                                     LABEL_VALUES), max_size=3))
    body = ",".join(f'{k}="{v}"' for k, v in labels)
    if draw(st.booleans()):
        body += draw(st.sampled_from(["", ",", " ", ",,"]))
    series = name + (f"{{{body}}}" if labels or draw(st.booleans()) else "")
    sep = draw(st.sampled_from([" ", " ", "\t", "  "]))
    line = series + sep + draw(VALUES)
    if draw(st.booleans()):
        line += " " + draw(st.sampled_from(["1700000000000", "1700000000.5", "-1", "x"]))
    if draw(st.booleans()):
        line += draw(st.sampled_from([' # {t="1"} 2', " # {} 1 1700000000", " ", "\r"]))
    return line.encode("utf-8", "surrogatepass")


COMMENT_LINES = st.sampled_from([
    b"# HELP a Some help.", b"# TYPE a counter", b"# TYPE a gauge", b"# TYPE a  gauge",
    b"# TYPE a unknown", b"# HELP a", b"# UNIT a_seconds seconds", b"#comment",
    b"# free text", b"#\tTYPE a gauge", b"# HELP a \xff", b"", b"# EOF",
])


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(sample_line(), COMMENT_LINES,
                                    st.lists(st.sampled_from(FRAGMENTS), max_size=6)
                                    .map(b"".join)), max_size=8))
    body = b"\n".join(lines)
    if draw(st.booleans()):
        body += b"\n"
    if draw(st.booleans()):
        body += b"# EOF\n"
    return body


VALID_VALUES = st.sampled_from(["1", "-0", "2.5e-3", "NaN", "+Inf", "-Inf", ".5", "5.", "1e21",
                                "007", "-1.5E+2", "inf"])
GOOD_LABEL_VALUES = st.lists(st.sampled_from([*"ab {}=,#é }", "\\\\", '\\"', "\\n"]),
                             max_size=5).map("".join)


@st.composite
def valid_line(draw: st.DrawFn, openmetrics: bool) -> str:
    kind = draw(st.integers(0, 5))
    name = draw(st.sampled_from(["a", "foo_total", "h_bucket", ":c", "x1"]))
    if kind == 0:
        word = draw(st.sampled_from(["HELP", "TYPE", "UNIT" if openmetrics else "HELP"]))
        text = {"HELP": "help text", "TYPE": "gauge", "UNIT": ""}[word]
        return f"# {word} {name} {text}"
    labels = draw(st.dictionaries(st.sampled_from(["x", "y", "le", "_z"]), GOOD_LABEL_VALUES,
                                  max_size=3))
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    line = f"{name}{{{inner}}} " if labels or draw(st.booleans()) else f"{name} "
    line += draw(VALID_VALUES)
    if draw(st.booleans()):
        line += " " + draw(st.sampled_from(["1700000000", "1700000000.25"] if openmetrics
                                           else ["1700000000000", "17"]))
    if openmetrics and name in ("foo_total", "h_bucket") and draw(st.booleans()):
        line += ' # {t="x"} 0.5'
    return line


@st.composite
def near_valid_bodies(draw: st.DrawFn, openmetrics: bool) -> bytes:
    """Valid bodies, sometimes with one byte inserted, deleted or replaced."""
    lines = draw(st.lists(valid_line(openmetrics), max_size=8))
    body = ("\n".join(lines) + "\n" + ("# EOF\n" if openmetrics else "")).encode()
    if draw(st.integers(0, 2)) == 0:
        return body
    pos = draw(st.integers(0, len(body)))
    byte = draw(st.sampled_from(list(b' \t\n"\\{},=#x0.\x00\xff\r')))
    edit = draw(st.sampled_from(["insert", "delete", "replace"]))
    if edit == "insert":
        return body[:pos] + bytes([byte]) + body[pos:]
    if edit == "delete":
        return body[:pos] + body[pos + 1:]
    return body[:pos] + bytes([byte]) + body[pos + 1:]


def only_parse_errors(parser: Parser, body: bytes) -> None:
    try:
        scraped = parser.parse(body)
        for text, _, _ in scraped.samples:
            parser.parse_series(text)
    except ParseError:
        pass
    try:
        parser.parse_all(body)
    except ParseError:
        pass


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_parse_errors(body: bytes) -> None:
    for parser in PARSERS:
        only_parse_errors(parser, body)


@SETTINGS
@given(st.text(max_size=60))
def test_arbitrary_series_text_raises_only_parse_errors(text: str) -> None:
    for parser in PARSERS:
        try:
            parser.parse_series(text)
        except ParseError:
            pass


@SETTINGS
@given(bodies())
def test_both_routes_agree_on_exposition_like_bodies(body: bytes) -> None:
    for parser in PARSERS:
        read_both(parser, body)  # raises AssertionError when they differ


@SETTINGS
@given(near_valid_bodies(openmetrics=False))
def test_both_routes_agree_on_near_valid_text(body: bytes) -> None:
    read_both(PrometheusTextParser(), body)


@SETTINGS
@given(near_valid_bodies(openmetrics=True))
def test_both_routes_agree_on_near_valid_openmetrics(body: bytes) -> None:
    read_both(OpenMetricsParser(), body)


@SETTINGS
@given(st.lists(st.tuples(
    st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,8}", fullmatch=True),
    st.dictionaries(st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,5}", fullmatch=True),
                    st.text(min_size=1, max_size=8).filter(
                        lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
                    max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none() | st.integers(min_value=0, max_value=2**63 - 1),
), max_size=5))
def test_canonical_text_reads_back_exactly(samples: list) -> None:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    lines = []
    for name, labels, value, ts in samples:
        inner = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{inner}}} {value!r}" + (f" {ts}" if ts is not None else ""))
    body = ("\n".join(lines) + "\n").encode()
    parser = PrometheusTextParser()
    got, error = read_both(parser, body)
    assert got is not None, error
    assert [(n, lab, ts) for n, lab, _, ts in got] == [(n, lab, ts) for n, lab, _, ts in samples]
    for (_, _, text, _), (_, _, value, _) in zip(got, samples, strict=True):
        assert text == format_value(value)
        if not math.isnan(value):
            assert float(text) == value
