"""Parsers: the parser contract and the Prometheus text format (0.0.4).

The text parser accepts and rejects exactly what Prometheus 2.42 does (its lexer
``promlex.l``, its parser ``promparse.go`` and the label checks of its scrape loop), and reads
the same names, labels, values and timestamps. It has three paths:

- a fast path for the ordinary layout (one space between series, value and timestamp,
  ``# HELP``/``# TYPE`` written the usual way, no NUL bytes, valid UTF-8):
  a few C-level regular expression passes over the whole body, then one float per sample.
  Series text is not checked here: `PrometheusTextParser.parse_series` checks it on a
  scrape-cache miss, and a series text seen in a successful scrape is known to be valid.
- a middle path when some lines are unusual: the usual lines as above, each unusual line
  through the exact parser on its own (lines are independent in this format, except for
  NUL bytes and quoted label values that run on over a newline, which take the exact path);
- an exact path: a byte-level reimplementation of Prometheus's lexer and parser, written
  from their rules, which also produces Prometheus's error text (with a line number added).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from decimal import Decimal
from itertools import repeat
from operator import itemgetter
from typing import ClassVar

from ._errors import TrawlError

RawSample = tuple[str, float, "int | None"]
"""``(series text as it appeared, value, timestamp in ms or None)``."""

Sample = tuple[str, dict[str, str], float, "int | None"]
"""``(metric name, labels, value, timestamp in ms or None)``."""


class ParseError(TrawlError):
    """The payload is rejected; the message says where and what was expected."""


class Scraped:
    """What a parser read from one response body.

    Attributes:
      samples: ``(series_text, value, timestamp_ms | None)`` per sample, in order. The
        series text (``name{labels}`` exactly as it appeared) is the scrape cache's key;
        `Parser.parse_series` turns it into a name and labels on a cache miss.
      types: Metric family name → type (``counter``, ``gauge``, ``histogram``,
        ``summary``, ``untyped``, and for OpenMetrics also ``gaugehistogram``, ``info``,
        ``stateset``, ``unknown``). A parser may compute it on first use.
    """

    __slots__ = ("_type_source", "_types", "samples")

    def __init__(self, samples: list[RawSample] | None = None,
                 types: dict[str, str] | Callable[[], dict[str, str]] | None = None) -> None:
        self.samples: list[RawSample] = [] if samples is None else samples
        self._types: dict[str, str] = {}
        self._type_source: Callable[[], dict[str, str]] | None = None
        if callable(types):
            self._type_source = types
        elif types is not None:
            self._types = types

    @property
    def types(self) -> dict[str, str]:
        if self._type_source is not None:
            self._types = self._type_source()
            self._type_source = None
        return self._types

    @types.setter
    def types(self, value: dict[str, str]) -> None:
        self._types = value
        self._type_source = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scraped):
            return NotImplemented
        return self.samples == other.samples and self.types == other.types

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Scraped(samples={self.samples!r}, types={self.types!r})"


class Parser(ABC):
    """A parser reads one exposition format.

    Subclasses set ``kind`` and ``content_types`` (media types, lower case, without
    parameters), and may set ``accept_header``: their part of the scrape's ``Accept``
    header. Parsers are stateless and must not block: they run on the Trio thread.
    """

    kind: ClassVar[str]
    content_types: ClassVar[tuple[str, ...]] = ()
    accept_header: ClassVar[str] = ""

    @classmethod
    def accepts(cls, content_type: str, media_type: str) -> bool:
        """Whether this parser reads a response with this ``Content-Type``."""
        return media_type in cls.content_types

    @abstractmethod
    def parse(self, body: bytes) -> Scraped:
        """Read a whole body; raise `ParseError` to reject the whole scrape."""

    @abstractmethod
    def parse_series(self, text: str) -> tuple[str, dict[str, str]]:
        """Split series text from `Scraped.samples` into metric name and labels."""

    def parse_all(self, body: bytes) -> list[Sample]:
        """Read a whole body into ``(name, labels, value, ts)``, checking every series.

        Raises:
          ParseError: for the first problem in the body, as Prometheus reports it.
        """
        scraped = self.parse(body)
        return [(*self.parse_series(text), value, ts) for text, value, ts in scraped.samples]


# ------------------------------------------------------------------------------------ values

_GO_FLOAT = re.compile(
    rb"(?:[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    rb"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?)|[nN][aA][nN])\Z"
)


def go_float(raw: bytes) -> float:
    """Parse a value as Prometheus does (Go's ``strconv.ParseFloat``, no hex, no ``_``).

    Go accepts fewer spellings than Python's ``float()``: no whitespace, no underscores, no
    signed ``nan``, no non-ASCII digits; and a finite spelling beyond the float range is an
    error, not infinity.

    Raises:
      ValueError: with Go's error text.
    """
    if b"p" in raw or b"P" in raw or b"_" in raw:
        raise ValueError("unsupported character in float")
    if _GO_FLOAT.match(raw) is None:
        raise ValueError(f"strconv.ParseFloat: parsing {_go_quote(raw)}: invalid syntax")
    value = float(raw)
    if value in _INFINITIES and raw.lstrip(b"+-")[:1] not in (b"i", b"I"):
        raise ValueError(f"strconv.ParseFloat: parsing {_go_quote(raw)}: value out of range")
    return value


def go_int64(raw: bytes) -> int:
    """Parse a decimal timestamp as Go's ``strconv.ParseInt(s, 10, 64)`` (digits only here)."""
    value = int(raw)
    if value > _INT64_MAX:
        raise ValueError(f"strconv.ParseInt: parsing {_go_quote(raw)}: value out of range")
    return value


def go_int64_from_float(value: float) -> int:
    """Go's ``int64(f)`` conversion on amd64: out of range (and NaN) gives the minimum."""
    if value != value or not -9.223372036854775808e18 <= value < 9.223372036854775808e18:
        return -(2**63)
    return int(value)


def format_value(value: float) -> str:
    """A sample value as Prometheus's HTTP API prints it.

    That is Go's ``strconv.FormatFloat(v, 'f', -1, 64)``, or ``'e'`` when
    ``|v| < 1e-6`` or ``|v| >= 1e21``: ``"1"``, ``"2.5"``, ``"0.00001"``, ``"1e-07"``,
    ``"1e+21"``, ``"-0"``, ``"NaN"``, ``"+Inf"``, ``"-Inf"``.
    """
    if value != value:
        return "NaN"
    if value in _INFINITIES:
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits = Decimal(repr(value)).normalize()
    magnitude = abs(value)
    if 1e-6 <= magnitude < 1e21:
        return format(digits, "f")
    sign, figures, exponent = digits.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, figures)).rstrip("0") or "0"
    exp10 = exponent + len(figures) - 1
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"


def _go_quote(raw: bytes) -> str:
    """Go's ``%q`` of a byte string (``strconv.Quote``)."""
    out = ['"']
    for ch in raw.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}
_INFINITIES = (math.inf, -math.inf)
_INT64_MAX = 2**63 - 1

# ----------------------------------------------------------------------- label set checks

_METRIC_NAME_OK = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def finish_labels(name: str, pairs: list[tuple[bytes, bytes]], unescape: bool = True
                  ) -> tuple[str, dict[str, str]]:
    """Turn raw label pairs into the label set Prometheus stores, or reject it.

    As Prometheus's scrape loop does (``labels.Builder``, then ``IsValid``, then the head's
    duplicate check): every label whose name has an empty value somewhere in the set is
    dropped, all of its occurrences; a ``__name__`` label in braces then either removes the
    metric name (empty) or duplicates it; label values must be UTF-8 (the callers check).
    """
    values: list[tuple[str, str]] = []
    for lname_b, raw in pairs:
        if unescape and b"\\" in raw:
            raw = _unescape(raw)
        values.append((lname_b.decode("ascii"), raw.decode("utf-8")))
    return label_set(name, values)


def label_set(name: str, values: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
    """`finish_labels` on decoded, unescaped ``(label name, value)`` pairs."""
    if not values:
        return name, {}
    empty = {k for k, v in values if not v}
    if "__name__" in empty:
        raise ParseError("missing metric name (__name__ label)")
    kept = [(k, v) for k, v in values if k not in empty]
    labels = dict(kept)
    if len(labels) != len(kept) or "__name__" in labels:
        if any(k == "__name__" and not _METRIC_NAME_OK.match(v) for k, v in kept):
            raise ParseError(f"invalid metric name or label names: {_lset(name, kept)}")
        seen: set[str] = {"__name__"}
        dups = sorted({k for k, _ in kept if k in seen or seen.add(k)})  # type: ignore[func-returns-value]
        raise ParseError(f'label name "{dups[0]}" is not unique: invalid sample')
    return name, labels


def _lset(name: str, pairs: list[tuple[str, str]]) -> str:
    items = sorted([("__name__", name), *pairs])
    return "{" + ", ".join(f"{k}={_go_quote(v.encode())}" for k, v in items) + "}"


def _unescape(raw: bytes) -> bytes:
    """Prometheus's label value unescaping: ``\\"``, ``\\\\`` and ``\\n``; others stay."""
    return _ESCAPE.sub(_escape_sub, raw)


_ESCAPE = re.compile(rb'\\(["\\n])')
_ESCAPE_STR = re.compile(r'\\(["\\n])')


def _escape_sub(m: re.Match[bytes]) -> bytes:
    ch = m.group(1)
    return b"\n" if ch == b"n" else ch


def _escape_sub_str(m: re.Match[str]) -> str:
    ch = m.group(1)
    return "\n" if ch == "n" else ch


_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n\x00]*(?:\\[^\n\x00][^"\\\n\x00]*)*"'
SERIES_TEXT_FAST = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:" + _LABEL + r",)*(?:" + _LABEL + r")?)\})?\Z")
"""Series text in the usual layout: Prometheus's lexer reads it as this regex does."""
SERIES_OM_FAST = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:" + _LABEL + r"(?:," + _LABEL + r")*)?)\})?\Z")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\\n\x00]*(?:\\[^\n\x00][^"\\\n\x00]*)*)"')


def fast_series(text: str, pattern: re.Pattern[str]) -> tuple[str, dict[str, str]] | None:
    """Name and labels of series text in the usual layout, or ``None`` for the exact path."""
    m = pattern.match(text)
    if m is None or (not text.isascii() and _SURROGATE.search(text)):
        return None
    name, inner = m.groups()
    if not inner:
        return name, {}
    pairs = _LABEL_PAIR.findall(inner)
    if "\\" in inner:
        pairs = [(k, _ESCAPE_STR.sub(_escape_sub_str, v) if "\\" in v else v) for k, v in pairs]
    return label_set(name, pairs)


# ------------------------------------------------------------------ the exact text lexer

T_INVALID, T_EOF, T_LINEBREAK, T_WS, T_HELP, T_TYPE, T_UNIT, T_EOFWORD, T_TEXT = range(-1, 8)
T_COMMENT, T_MNAME, T_BOPEN, T_BCLOSE, T_LNAME, T_LVALUE, T_COMMA, T_EQUAL = range(8, 16)
T_TIMESTAMP, T_VALUE = 16, 17

TOKEN_NAMES = {
    T_INVALID: "INVALID", T_EOF: "EOF", T_LINEBREAK: "LINEBREAK", T_WS: "WHITESPACE",
    T_HELP: "HELP", T_TYPE: "TYPE", T_UNIT: "UNIT", T_EOFWORD: "EOFWORD", T_TEXT: "TEXT",
    T_COMMENT: "COMMENT", T_MNAME: "MNAME", T_BOPEN: "BOPEN", T_BCLOSE: "BCLOSE",
    T_LNAME: "LNAME", T_LVALUE: "LVALUE", T_EQUAL: "EQUAL", T_COMMA: "COMMA",
    T_TIMESTAMP: "TIMESTAMP", T_VALUE: "VALUE",
}

S_INIT, S_COMMENT, S_META1, S_META2, S_LABELS, S_LVALUE, S_VALUE, S_TIMESTAMP = range(8)
S_EXEMPLAR, S_EVALUE, S_ETIMESTAMP = 8, 9, 10

_P_WS = re.compile(rb"[ \t]+")
_P_WS_NUL = re.compile(rb"[ \t](?:\x00*[ \t])*\x00*")
_P_MNAME = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")
_P_LNAME = re.compile(rb"[a-zA-Z_][a-zA-Z0-9_]*")
_P_HELP = re.compile(rb"H\x00*E\x00*L\x00*P\x00*[ \t](?:\x00*[ \t])*\x00*")
_P_TYPE = re.compile(rb"T\x00*Y\x00*P\x00*E\x00*[ \t](?:\x00*[ \t])*\x00*")
_P_LVALUE = re.compile(rb'"(?:[^"\\]|\\\x00*[^\n\x00])*"\x00*')
_P_VALUE = re.compile(rb"[^{ \t\n\x00]+")
_P_DIGITS = re.compile(rb"[0-9]+")
_P_HASH_WS = re.compile(rb"#[ \t]+")
_P_BLANK_TEXT = re.compile(rb"[ \t][ \t\x00]*\n")


class ByteLexer:
    """What Prometheus's two lexers share: a cursor over the body's bytes, where the current
    token starts, and the lexer state."""

    def __init__(self, body: bytes) -> None:
        self.b = body
        self.i = 0
        self.start = 0
        self.state = S_INIT

    def buf(self) -> bytes:
        return self.b[self.start:self.i]

    def _take(self, pattern: re.Pattern[bytes]) -> bool:
        m = pattern.match(self.b, self.i)
        if m is None:
            return False
        self.i = m.end()
        return True

    def line(self, pos: int | None = None) -> int:
        """1-based line number of ``pos`` (default: the current token's start)."""
        return self.b.count(b"\n", 0, self.start if pos is None else pos) + 1

    def lex(self) -> int:
        raise NotImplementedError


class PromLexer(ByteLexer):
    """Prometheus 2.42's text-format lexer, rule for rule, on bytes.

    The input gets a trailing newline, as Prometheus adds one. NUL bytes behave as in
    Prometheus: skipped inside label values, help text and comments, the end of input at
    the start of a line or right after ``#``, and invalid elsewhere.
    """

    def __init__(self, body: bytes) -> None:
        super().__init__(body + b"\n")

    def lex(self) -> int:
        b = self.b
        if self.i >= len(b):
            return T_EOF
        self.start = self.i
        while True:
            state = self.state
            c = b[self.i]
            if state == S_INIT:
                if c == 0:
                    self.i += 1
                    return T_EOF
                if c == 10:
                    self.i += 1
                    return T_LINEBREAK
                if c in (32, 9):
                    self._take(_P_WS)
                    return T_WS
                if c == 35:  # '#'
                    if self._take(_P_HASH_WS):
                        self.state = S_COMMENT
                        continue
                    self.i += 1
                    return self._consume_comment(skip_nul=False)
                if self._take(_P_MNAME):
                    self.state = S_VALUE
                    return T_MNAME
                return T_INVALID
            if state == S_COMMENT:
                if self._take(_P_HELP):
                    self.state = S_META1
                    return T_HELP
                if self._take(_P_TYPE):
                    self.state = S_META1
                    return T_TYPE
                if c in (32, 9):
                    self._take(_P_WS_NUL)
                    return T_WS
                return self._consume_comment(skip_nul=True)
            if state == S_META1:
                if self._take(_P_MNAME):
                    self.state = S_META2
                    return T_MNAME
                if self._take(_P_WS):
                    return T_WS
                return T_INVALID
            if state == S_META2:
                if c in (32, 9) and _P_BLANK_TEXT.match(b, self.i):
                    self._take(_P_WS_NUL)
                    return T_WS
                if c != 0 and c != 10:
                    self.i = b.index(b"\n", self.i)
                self.state = S_INIT
                return T_TEXT
            if state == S_LABELS:
                if c == 44:
                    self.i += 1
                    return T_COMMA
                if c == 61:
                    self.i += 1
                    self.state = S_LVALUE
                    return T_EQUAL
                if c == 125:
                    self.i += 1
                    self.state = S_VALUE
                    return T_BCLOSE
                if self._take(_P_WS):
                    return T_WS
                if self._take(_P_LNAME):
                    return T_LNAME
                return T_INVALID
            if state == S_LVALUE:
                if self._take(_P_LVALUE):
                    self.state = S_LABELS
                    return T_LVALUE
                if c in (32, 9):
                    self._take(_P_WS_NUL)
                    return T_WS
                return T_INVALID
            if state == S_VALUE:
                if c == 123:
                    self.i += 1
                    self.state = S_LABELS
                    return T_BOPEN
                if self._take(_P_WS):
                    return T_WS
                if self._take(_P_VALUE):
                    self.state = S_TIMESTAMP
                    return T_VALUE
                return T_INVALID
            # S_TIMESTAMP
            if c == 10:
                self.i += 1
                self.state = S_INIT
                return T_LINEBREAK
            if self._take(_P_WS):
                return T_WS
            if self._take(_P_DIGITS):
                return T_TIMESTAMP
            return T_INVALID

    def _consume_comment(self, skip_nul: bool) -> int:
        b = self.b
        if b[self.i] == 0:
            return T_EOF
        if skip_nul:
            self.i = b.index(b"\n", self.i)
        else:
            nl = b.index(b"\n", self.i)
            nul = b.find(b"\x00", self.i, nl)
            if nul >= 0:
                self.i = nul
                return T_EOF
            self.i = nl
        self.state = S_INIT
        return T_COMMENT


def parse_error(expected: str, got: int) -> str:
    return f'{expected}, got "{TOKEN_NAMES[got]}"'


_TEXT_TYPES = {b"counter": "counter", b"gauge": "gauge", b"histogram": "histogram",
               b"summary": "summary", b"untyped": "untyped"}


class ExactParser:
    """What the exact parsers share: a lexer, what they read, errors with line numbers.

    Args:
      full: Keep every sample with its name and labels in ``named`` too (`trawl parse`).
    """

    lexer: ClassVar[type[ByteLexer]]

    def __init__(self, body: bytes, full: bool) -> None:
        self.lx = self.lexer(body)
        self.full = full
        self.samples: list[RawSample] = []
        self.named: list[Sample] = []
        self.types: dict[str, str] = {}

    def fail(self, message: str, pos: int | None = None) -> ParseError:
        return ParseError(f"line {self.lx.line(pos)}: {message}")


class _ExactText(ExactParser):
    """Prometheus 2.42's ``PromParser.Next`` loop over a whole body, with line numbers."""

    lexer = PromLexer
    lx: PromLexer

    def token(self) -> int:
        lx = self.lx
        while True:
            tok = lx.lex()
            if tok != T_WS:
                return tok

    def run(self) -> None:
        lx = self.lx
        while True:
            entry_start = lx.i
            t = self.token()
            if t == T_EOF:
                return
            if t == T_LINEBREAK:
                continue
            if t in (T_HELP, T_TYPE):
                self.meta(t)
            elif t == T_COMMENT:
                t2 = self.token()
                if t2 != T_LINEBREAK:
                    raise self.fail(parse_error("linebreak expected after comment", t2))
            elif t == T_MNAME:
                self.sample(entry_start)
            else:
                raise self.fail(f'"{TOKEN_NAMES[t]}" is not a valid start token')

    def meta(self, t: int) -> None:
        lx = self.lx
        what = TOKEN_NAMES[t]
        t2 = self.token()
        if t2 != T_MNAME:
            raise self.fail(parse_error("expected metric name after " + what, t2))
        name = lx.buf()
        if self.token() != T_TEXT:
            raise self.fail(f"expected text in {what}")
        raw = lx.buf()
        text = raw[1:] if len(raw) > 1 else b""
        if t == T_TYPE:
            mtype = _TEXT_TYPES.get(text)
            if mtype is None:
                raise self.fail(f"invalid metric type {_go_quote(text)}")
            self.types[name.decode("ascii")] = mtype
        else:
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("help text is not a valid utf8 string") from None
        t3 = self.token()
        if t3 != T_LINEBREAK:
            raise self.fail(parse_error("linebreak expected after metadata", t3))

    def sample(self, entry_start: int) -> None:
        lx = self.lx
        name_start = lx.start
        name_end = lx.i
        pairs: list[tuple[bytes, bytes]] = []
        series_end = name_end
        t2 = self.token()
        if t2 == T_BOPEN:
            self.labels(pairs)
            series_end = lx.i
            t2 = self.token()
        if t2 != T_VALUE:
            raise self.fail(parse_error("expected value after metric", t2))
        try:
            value = go_float(lx.buf())
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        ts: int | None = None
        t3 = self.token()
        if t3 == T_TIMESTAMP:
            try:
                ts = go_int64(lx.buf())
            except ValueError as exc:
                raise self.fail(str(exc)) from None
            t4 = self.token()
            if t4 != T_LINEBREAK:
                raise self.fail(parse_error("expected next entry after timestamp", t4))
        elif t3 != T_LINEBREAK:
            raise self.fail(parse_error("expected timestamp or new record", t3))
        b = lx.b
        if name_start != entry_start:
            # Prometheus keeps the leading whitespace in the metric name, which then fails
            # the scrape loop's name check.
            lead = b[entry_start:name_end].decode("ascii")
            raise self.fail(f'invalid metric name or label names: {{__name__="{lead}"}}',
                            name_start)
        series = b[name_start:series_end].decode("utf-8", "surrogateescape")
        self.samples.append((series, value, ts))
        if self.full:
            try:
                name, labels = finish_labels(b[name_start:name_end].decode("ascii"), pairs)
            except ParseError as exc:
                raise self.fail(str(exc), name_start) from None
            self.named.append((name, labels, value, ts))

    def labels(self, pairs: list[tuple[bytes, bytes]]) -> None:
        lx = self.lx
        t = self.token()
        while True:
            if t == T_BCLOSE:
                return
            if t != T_LNAME:
                raise self.fail(parse_error("expected label name", t))
            lname = lx.buf()
            t = self.token()
            if t != T_EQUAL:
                raise self.fail(parse_error("expected equal", t))
            t = self.token()
            if t != T_LVALUE:
                raise self.fail(parse_error("expected label value", t))
            raw = lx.buf()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("invalid UTF-8 label value") from None
            pairs.append((lname, raw[1:-1]))
            t = self.token()
            if t == T_COMMA:
                t = self.token()


# ------------------------------------------------------------------- the text format

VALUE_FAST = (
    r"[+-]?(?:[0-9]{1,200}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,2})?"
    r"|[+-]?[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN]"
)
"""Go float spellings that Python's ``float()`` reads identically and cannot overflow."""

# The fast path works on "\n" + body (+ "\n"), so every line is "\n...(?=\n)": a regex
# with a literal first character is searched far faster than one anchored with ^.
_TEXT_SAMPLE = re.compile(
    r"\n([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^\n]*\})?) (" + VALUE_FAST + r")(?: ([0-9]{1,18}))?$",
    re.M,
)
# Comment lines: Prometheus rejects only malformed "# HELP"/"# TYPE" lines. This matches
# every comment line that is sure to be fine: a "# TYPE" line written the usual way (the
# whole line comes back, for the types), a "# HELP" line with a name, and any comment that
# is not a HELP or TYPE line ("\n" comes back). Anything else is left unmatched, which sends
# the body to the exact parser.
_TEXT_COMMENTS = re.compile(
    r"\n(?:\# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (?:counter|gauge|histogram|summary|untyped)$"
    r"|(?=\# HELP [a-zA-Z_:]|\#(?![ \t]+(?:HELP|TYPE)[ \t])))",
    re.M,
)
_STRINGS_CLOSED = re.compile(r'[^"]*+(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"[^"]*+)*+\Z', re.S)
_SURROGATE = re.compile("[\udc80-\udcff]")
_BLANK_LINES = re.compile("\n\n+")


def decode_body(body: bytes) -> str | None:
    """The body as text for the fast paths, or ``None`` when it holds NUL or bad UTF-8."""
    text = body.decode("utf-8", "surrogateescape")
    if "\x00" in text:
        return None
    if not text.isascii() and _SURROGATE.search(text):
        return None
    return text


def _fast_text(body: bytes) -> Scraped | None:
    """The text format's fast path, or ``None`` when the body needs the exact parser.

    Sound by construction: a line is taken here only when Prometheus's lexer splits it
    the same way, provided the series text is itself valid, which `parse_series` decides
    exactly (series text alone lexes as it does inside the line, because every quoted
    label value in it is closed before its end).
    """
    text = decode_body(body)
    if text is None:
        return None
    if not text:
        return Scraped()
    text = "\n" + text if text[-1] == "\n" else "\n" + text + "\n"
    found = _TEXT_SAMPLE.findall(text)
    comments = _TEXT_COMMENTS.findall(text)
    if len(found) + len(comments) != text.count("\n") - 1:
        # Some line is neither a plain sample nor a comment. Blank lines are allowed (and
        # dropping them changes no label value: a value that held one would be caught
        # open below); anything else is for the exact parser.
        if "\n\n" not in text:
            return None
        text = _BLANK_LINES.sub("\n", text)
        found = _TEXT_SAMPLE.findall(text)
        comments = _TEXT_COMMENTS.findall(text)
        if len(found) + len(comments) != text.count("\n") - 1:
            return None
    series = list(map(_first, found))
    if "\\" in text:
        suspects = [s for s in series if s.count('"') & 1 or "\\" in s]
    elif any(n & 1 for n in set(map(str.count, series, repeat('"')))):
        suspects = [s for s in series if s.count('"') & 1]
    else:
        suspects = []
    for text in suspects:
        if not _STRINGS_CLOSED.match(text):
            return None  # a label value may run on to the next line: read it exactly
    types = _TypeLines(comments) if comments else None
    if any(map(_third, found)):
        return Scraped([(s, float(v), int(t) if t else None) for s, v, t in found], types)
    return Scraped(list(zip(series, map(float, map(_second, found)), repeat(None))), types)


_LINE_SAMPLE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?) (" + VALUE_FAST + r")(?: ([0-9]{1,18}))?\Z")
_LINE_TYPE = re.compile(
    r"\# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)\Z")
_LINE_COMMENT = re.compile(r"\# HELP [a-zA-Z_:]|\#(?![ \t]+(?:HELP|TYPE)[ \t])")


def _line_by_line(body: bytes) -> Scraped | None:
    """The middle path, for a body with a few unusual lines: usual lines as the fast path
    reads them, each unusual one through the exact parser on its own. ``None`` when lines
    cannot be read apart (NUL bytes, bad UTF-8, a quoted label value that may run on to
    the next line)."""
    text = decode_body(body)
    if text is None:
        return None
    samples: list[RawSample] = []
    append = samples.append
    types: dict[str, str] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        m = _LINE_SAMPLE.match(line)
        if m is not None:
            series, value, ts = m.groups()
            if ('"' in series or "\\" in series) and not _STRINGS_CLOSED.match(series):
                return None
            append((series, float(value), int(ts) if ts else None))
            continue
        m = _LINE_TYPE.match(line)
        if m is not None:
            types[m.group(1)] = m.group(2)
            continue
        if _LINE_COMMENT.match(line):
            continue
        if ('"' in line or "\\" in line) and not _STRINGS_CLOSED.match(line):
            return None
        exact = _ExactText(line.encode(), full=False)
        try:
            exact.run()
        except ParseError as exc:
            raise ParseError(f"line {lineno}: {str(exc).split(': ', 1)[1]}") from None
        samples += exact.samples
        types.update(exact.types)
    return Scraped(samples, types)


class _TypeLines:
    """The families' types from the fast path's comment matches, read when asked for."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __call__(self) -> dict[str, str]:
        types = {}
        for line in self.lines:
            if len(line) > 1:
                _, _, name, mtype = line.split(" ")
                types[name] = mtype
        return types


_first = itemgetter(0)
_second = itemgetter(1)
_third = itemgetter(2)


class PrometheusTextParser(Parser):
    """The Prometheus text exposition format, version 0.0.4, exactly as Prometheus 2.42."""

    kind = "prometheus-text"
    content_types = ("text/plain",)
    accept_header = "text/plain;version=0.0.4;q=0.5"

    def parse(self, body: bytes) -> Scraped:
        scraped = _fast_text(body)
        if scraped is None:
            scraped = _line_by_line(body)
        if scraped is None:
            exact = _ExactText(body, full=False)
            exact.run()
            scraped = Scraped(exact.samples, exact.types)
        return scraped

    def parse_all(self, body: bytes) -> list[Sample]:
        exact = _ExactText(body, full=True)
        exact.run()
        return exact.named

    def parse_series(self, text: str) -> tuple[str, dict[str, str]]:
        fast = fast_series(text, SERIES_TEXT_FAST)
        if fast is not None:
            return fast
        raw = text.encode("utf-8", "surrogateescape")
        exact = _ExactText(raw, full=False)
        lx = exact.lx
        try:
            if exact.token() != T_MNAME or lx.start != 0:
                raise ParseError(f"invalid series {text!r}")
            name = lx.buf().decode("ascii")
            pairs: list[tuple[bytes, bytes]] = []
            end = lx.i
            if end < len(raw):
                if exact.token() != T_BOPEN:
                    raise ParseError(f"invalid series {text!r}")
                exact.labels(pairs)
                end = lx.i
        except ParseError as exc:
            raise ParseError(f"{exc} in series {text!r}".replace("line 1: ", "")) from None
        if end != len(raw):
            raise ParseError(f"unexpected text after the label set in series {text!r}")
        return finish_labels(name, pairs)
