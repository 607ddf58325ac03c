"""The OpenMetrics 1.0 text format, exactly as Prometheus 2.42 reads it.

Like the text parser in `trawl._parsing`: a fast path of whole-body regular expressions
for the ordinary layout, and an exact byte-level reimplementation of Prometheus's
``openmetricslex.l`` and ``openmetricsparse.go`` for everything else (and for error text).
Exemplars are checked as Prometheus checks them, then ignored.

Prometheus 2.42 checks no more than its parser does: no family order, no ``_total`` or
``_created`` suffix rules, no duplicate ``TYPE``; so neither does this.
"""

from __future__ import annotations

import re

from ._parsing import (
    S_COMMENT,
    S_ETIMESTAMP,
    S_EVALUE,
    S_EXEMPLAR,
    S_INIT,
    S_LABELS,
    S_LVALUE,
    S_META1,
    S_META2,
    S_TIMESTAMP,
    S_VALUE,
    SERIES_OM_FAST,
    T_BCLOSE,
    T_BOPEN,
    T_COMMA,
    T_COMMENT,
    T_EOF,
    T_EOFWORD,
    T_EQUAL,
    T_HELP,
    T_INVALID,
    T_LINEBREAK,
    T_LNAME,
    T_LVALUE,
    T_MNAME,
    T_TEXT,
    T_TIMESTAMP,
    T_TYPE,
    T_UNIT,
    T_VALUE,
    TOKEN_NAMES,
    VALUE_FAST,
    ByteLexer,
    ExactParser,
    ParseError,
    Parser,
    RawSample,
    Sample,
    Scraped,
    _go_quote,
    decode_body,
    fast_series,
    finish_labels,
    go_float,
    go_int64_from_float,
    parse_error,
)

_P_MNAME = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*")
_P_LNAME = re.compile(rb"[a-zA-Z_][a-zA-Z0-9_]*")
_P_EOF = re.compile(rb"E\x00*O\x00*F\x00*(?:\n\x00*)?")
_P_META = {
    T_HELP: re.compile(rb"H\x00*E\x00*L\x00*P\x00* \x00*"),
    T_TYPE: re.compile(rb"T\x00*Y\x00*P\x00*E\x00* \x00*"),
    T_UNIT: re.compile(rb"U\x00*N\x00*I\x00*T\x00* \x00*"),
}
_P_TEXT = re.compile(rb" [^\n]*\n\x00*")
_P_LVALUE = re.compile(rb'"(?:[^"\\\n]|\\\x00*[^\n\x00])*"\x00*')
_P_EVALUE = re.compile(rb'"(?:[^"\\\n\x00]|\\[^\n\x00])*"')
_P_SPACED = re.compile(rb" [^ \n\x00]+")
_P_EXEMPLAR_START = re.compile(rb" # \{")


class OpenMetricsLexer(ByteLexer):
    """Prometheus 2.42's OpenMetrics lexer, rule for rule, on bytes (no newline added)."""

    def lex(self) -> int:
        b = self.b
        if self.i >= len(b):
            return T_EOF
        self.start = self.i
        while True:
            state = self.state
            c = b[self.i]
            if state == S_INIT:
                if c == 35:  # '#'
                    if b[self.i + 1:self.i + 2] == b" ":
                        self.i += 2
                        self.state = S_COMMENT
                        if self.i >= len(b):
                            return T_INVALID
                        continue
                    self.i += 1  # the lexer stops after the '#'
                    return T_INVALID
                if self._take(_P_MNAME):
                    self.state = S_VALUE
                    return T_MNAME
                return T_INVALID
            if state == S_COMMENT:
                if self._take(_P_EOF):
                    self.state = S_INIT
                    return T_EOFWORD
                for tok, pattern in _P_META.items():
                    if self._take(pattern):
                        self.state = S_META1
                        return tok
                self._skip_keyword_prefix()
                return T_INVALID
            if state == S_META1:
                if self._take(_P_MNAME):
                    self.state = S_META2
                    return T_MNAME
                return T_INVALID
            if state == S_META2:
                if self._take(_P_TEXT):
                    self.state = S_INIT
                    return T_TEXT
                return T_INVALID
            if state in (S_LABELS, S_EXEMPLAR):
                if c == 44:
                    self.i += 1
                    return T_COMMA
                if c == 61:
                    self.i += 1
                    self.state = S_LVALUE if state == S_LABELS else S_EVALUE
                    return T_EQUAL
                if c == 125:
                    self.i += 1
                    self.state = S_VALUE if state == S_LABELS else S_EVALUE
                    return T_BCLOSE
                if self._take(_P_LNAME):
                    return T_LNAME
                return T_INVALID
            if state == S_LVALUE:
                if self._take(_P_LVALUE):
                    self.state = S_LABELS
                    return T_LVALUE
                return T_INVALID
            if state == S_EVALUE:
                if self._take(_P_EVALUE):
                    self.state = S_EXEMPLAR
                    return T_LVALUE
                if self._take(_P_SPACED):
                    self.state = S_ETIMESTAMP
                    return T_VALUE
                return T_INVALID
            if state == S_VALUE:
                if c == 123:
                    self.i += 1
                    self.state = S_LABELS
                    return T_BOPEN
                if self._take(_P_SPACED):
                    self.state = S_TIMESTAMP
                    return T_VALUE
                return T_INVALID
            # S_TIMESTAMP and S_ETIMESTAMP
            if c == 10:
                self.i += 1
                self.state = S_INIT
                return T_LINEBREAK
            if state == S_TIMESTAMP:
                if self._take(_P_EXEMPLAR_START):
                    self.state = S_EXEMPLAR
                    return T_COMMENT
                if b.startswith(b" # ", self.i):  # the lexer gives up on " # " without "{"
                    self.i += 3
                    return T_INVALID
            if self._take(_P_SPACED):
                return T_TIMESTAMP
            return T_INVALID

    def _skip_keyword_prefix(self) -> None:
        """Where the lexer gives up on a partial keyword (``# HEL...``): after its prefix."""
        b = self.b
        for word in (b"EOF", b"HELP ", b"TYPE ", b"UNIT "):
            if b[self.i:self.i + 1] != word[:1]:
                continue
            i = self.i + 1
            for ch in word[1:]:
                while i < len(b) and b[i] == 0:
                    i += 1
                if i >= len(b) or b[i] != ch:
                    break
                i += 1
            self.i = i
            return


_OM_TYPES = {t.encode(): t for t in ("counter", "gauge", "histogram", "gaugehistogram",
                                      "summary", "info", "stateset", "unknown")}
_EXEMPLAR_SUFFIXES = (b"_total", b"_bucket")


class _ExactOpenMetrics(ExactParser):
    """Prometheus 2.42's ``OpenMetricsParser.Next`` loop over a whole body."""

    lexer = OpenMetricsLexer
    lx: OpenMetricsLexer

    def run(self) -> None:
        lx = self.lx
        while True:
            t = lx.lex()
            if t == T_EOFWORD:
                if lx.lex() != T_EOF:
                    raise self.fail("unexpected data after # EOF")
                return
            if t == T_EOF:
                raise self.fail("data does not end with # EOF")
            if t in (T_HELP, T_TYPE, T_UNIT):
                self.meta(t)
            elif t == T_MNAME:
                self.sample()
            else:
                # Go's string(byte): the byte as a code point.
                cur = chr(lx.b[lx.i]).encode() if lx.i < len(lx.b) else b""
                raise self.fail(f'"{TOKEN_NAMES[t]}" {_go_quote(cur)} is not a valid start token')

    def meta(self, t: int) -> None:
        lx = self.lx
        what = TOKEN_NAMES[t]
        t2 = lx.lex()
        if t2 != T_MNAME:
            raise self.fail(parse_error("expected metric name after " + what, t2))
        name = lx.buf()
        if lx.lex() != T_TEXT:
            raise self.fail(f"expected text in {what}")
        raw = lx.buf()
        text = raw[1:-1] if len(raw) > 1 else b""
        if t == T_TYPE:
            mtype = _OM_TYPES.get(text)
            if mtype is None:
                raise self.fail(f"invalid metric type {_go_quote(text)}")
            self.types[name.decode("ascii")] = mtype
        elif t == T_HELP:
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("help text is not a valid utf8 string") from None
        elif text and (not name.endswith(text) or len(name) < len(text) + 1
                       or name[-len(text) - 1:-len(text)] != b"_"):
            raise self.fail(f'unit not a suffix of metric "{name.decode("ascii")}"')

    def value(self, t: int, after: str) -> float:
        if t != T_VALUE:
            raise self.fail(parse_error(f"expected value after {after}", t))
        try:
            return go_float(self.lx.buf()[1:])
        except ValueError as exc:
            raise self.fail(str(exc)) from None

    def timestamp(self, what: str) -> int:
        try:
            ts = go_float(self.lx.buf()[1:])
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        if ts != ts or ts in (float("inf"), float("-inf")):
            raise self.fail(f"invalid {what}")
        return go_int64_from_float(ts * 1000)

    def sample(self) -> None:
        lx = self.lx
        name_start = lx.start
        name_end = lx.i
        series_end = name_end
        pairs: list[tuple[bytes, bytes]] = []
        t2 = lx.lex()
        if t2 == T_BOPEN:
            self.labels(pairs)
            series_end = lx.i
            t2 = lx.lex()
        value = self.value(t2, "metric")
        ts: int | None = None
        t3 = lx.lex()
        if t3 == T_EOF:
            raise self.fail("data does not end with # EOF")
        if t3 == T_COMMENT:
            self.exemplar(lx.b[name_start:name_end])
        elif t3 == T_TIMESTAMP:
            ts = self.timestamp("timestamp")
            t4 = lx.lex()
            if t4 == T_COMMENT:
                self.exemplar(lx.b[name_start:name_end])
            elif t4 != T_LINEBREAK:
                raise self.fail(parse_error("expected next entry after timestamp", t4))
        elif t3 != T_LINEBREAK:
            raise self.fail(parse_error("expected timestamp or # symbol", t3))
        series = lx.b[name_start:series_end].decode("utf-8", "surrogateescape")
        self.samples.append((series, value, ts))
        if self.full:
            try:
                name, labels = finish_labels(lx.b[name_start:name_end].decode("ascii"), pairs)
            except ParseError as exc:
                raise self.fail(str(exc), name_start) from None
            self.named.append((name, labels, value, ts))

    def exemplar(self, name: bytes) -> None:
        lx = self.lx
        if not name.endswith(_EXEMPLAR_SUFFIXES):
            raise self.fail(f"metric name {name.decode('ascii')} does not support exemplars")
        self.labels([])
        self.value(lx.lex(), "exemplar labels")
        t = lx.lex()
        if t == T_EOF:
            raise self.fail("data does not end with # EOF")
        if t == T_TIMESTAMP:
            self.timestamp("exemplar timestamp")
            t = lx.lex()
            if t != T_LINEBREAK:
                raise self.fail(parse_error("expected next entry after exemplar timestamp", t))
        elif t != T_LINEBREAK:
            raise self.fail(parse_error("expected timestamp or comment", t))

    def labels(self, pairs: list[tuple[bytes, bytes]]) -> None:
        lx = self.lx
        first = True
        while True:
            t = lx.lex()
            if t == T_BCLOSE:
                return
            if t == T_COMMA:
                if first:
                    raise self.fail(parse_error("expected label name or left brace", t))
                t = lx.lex()
                if t != T_LNAME:
                    raise self.fail(parse_error("expected label name", t))
            elif t == T_LNAME:
                if not first:
                    raise self.fail(parse_error("expected comma", t))
            elif first:
                raise self.fail(parse_error("expected label name or left brace", t))
            else:
                raise self.fail(parse_error("expected comma or left brace", t))
            first = False
            lname = lx.buf()
            t = lx.lex()
            if t != T_EQUAL:
                raise self.fail(parse_error("expected equal", t))
            t = lx.lex()
            if t != T_LVALUE:
                raise self.fail(parse_error("expected label value", t))
            raw = lx.buf()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("invalid UTF-8 label value") from None
            pairs.append((lname, raw[1:-1]))


# ------------------------------------------------------------------------------ fast path

_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*(?:\\.[^"\\\n]*)*"'
_LABELS = r"\{(?:" + _LABEL + r"(?:," + _LABEL + r")*)?\}"
_TS_FAST = r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]*)?|\.[0-9]+)"
_OM_SAMPLE = re.compile(
    r"\n([a-zA-Z_:][a-zA-Z0-9_:]*(?:" + _LABELS + r")?) (" + VALUE_FAST + r")"
    r"(?: (" + _TS_FAST + r"))?"
    r"(?:( \# " + _LABELS + r" (?:" + VALUE_FAST + r")(?: " + _TS_FAST + r")?))?(?=\n)"
)
_OM_META_OK = re.compile(
    r"\n\# (?:HELP [a-zA-Z_:][a-zA-Z0-9_:]* [^\n]*"
    r"|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* "
    r"(?:counter|gauge|histogram|gaugehistogram|summary|info|stateset|unknown)"
    r"|UNIT [a-zA-Z_:][a-zA-Z0-9_:]* [^\n]*)(?=\n)"
)
_OM_TYPE = re.compile(r"\n\# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ([a-z]+)(?=\n)")
_OM_UNIT = re.compile(r"\n\# UNIT ([a-zA-Z_:][a-zA-Z0-9_:]*) ([^\n]*)(?=\n)")
_EXEMPLAR_NAMES = ("_total", "_bucket")


def _fast_openmetrics(body: bytes) -> Scraped | None:
    """The fast path, or ``None`` when the body needs the exact parser."""
    text = decode_body(body)
    if text is None:
        return None
    if text.endswith("# EOF\n"):
        head = text[:-6]
    elif text.endswith("# EOF"):
        head = text[:-5]
    else:
        return None
    if head and head[-1] != "\n":
        return None
    head = "\n" + head
    if "\n\n" in head:
        return None
    found = _OM_SAMPLE.findall(head)
    metas = head.count("\n#")
    if len(found) + metas != head.count("\n") - 1:
        return None
    types: dict[str, str] = {}
    if metas:
        if len(_OM_META_OK.findall(head)) != metas:
            return None
        types = dict(_OM_TYPE.findall(head))
        for name, unit in _OM_UNIT.findall(head):
            if unit and not name.endswith("_" + unit):
                return None
    samples: list[RawSample] = []
    append = samples.append
    for series, value, ts, exemplar in found:
        if exemplar and not series.split("{", 1)[0].endswith(_EXEMPLAR_NAMES):
            return None
        append((series, float(value), int(float(ts) * 1000) if ts else None))
    return Scraped(samples, types)


_MEDIA_TYPE = re.compile(
    r"\s*[!#$%&'*+\-.^_`|~0-9a-zA-Z]+(?:/[!#$%&'*+\-.^_`|~0-9a-zA-Z]+)?\s*"
    r"((?:;\s*[!#$%&'*+\-.^_`|~0-9a-zA-Z]+\s*=\s*"
    r"(?:[!#$%&'*+\-.^_`|~0-9a-zA-Z]+|\"(?:[^\"\\]|\\.)*\")\s*)*)(?:;\s*)?\Z"
)
_PARAM_NAME = re.compile(r";\s*([^\s=]+)\s*=")


def media_type_valid(content_type: str) -> bool:
    """Whether Go's ``mime.ParseMediaType`` accepts the header (Prometheus falls back to
    the text format when it does not)."""
    m = _MEDIA_TYPE.match(content_type)
    if m is None:
        return False
    names = [n.lower() for n in _PARAM_NAME.findall(m.group(1))]
    return len(names) == len(set(names))


class OpenMetricsParser(Parser):
    """OpenMetrics 1.0 text (``application/openmetrics-text``), as Prometheus 2.42 reads it."""

    kind = "openmetrics-text"
    content_types = ("application/openmetrics-text",)
    accept_header = ("application/openmetrics-text;version=1.0.0,"
                     "application/openmetrics-text;version=0.0.1;q=0.75")

    @classmethod
    def accepts(cls, content_type: str, media_type: str) -> bool:
        return media_type in cls.content_types and media_type_valid(content_type)

    def parse(self, body: bytes) -> Scraped:
        scraped = _fast_openmetrics(body)
        if scraped is None:
            exact = _ExactOpenMetrics(body, full=False)
            exact.run()
            scraped = Scraped(exact.samples, exact.types)
        return scraped

    def parse_all(self, body: bytes) -> list[Sample]:
        exact = _ExactOpenMetrics(body, full=True)
        exact.run()
        return exact.named

    def parse_series(self, text: str) -> tuple[str, dict[str, str]]:
        fast = fast_series(text, SERIES_OM_FAST)
        if fast is not None:
            return fast
        raw = text.encode("utf-8", "surrogateescape")
        exact = _ExactOpenMetrics(raw + b" 0\n", full=False)
        lx = exact.lx
        try:
            if lx.lex() != T_MNAME:
                raise ParseError(f"invalid series {text!r}")
            name = lx.buf().decode("ascii")
            pairs: list[tuple[bytes, bytes]] = []
            if lx.i < len(raw):
                if lx.lex() != T_BOPEN:
                    raise ParseError(f"invalid series {text!r}")
                exact.labels(pairs)
        except ParseError as exc:
            raise ParseError(f"{exc} in series {text!r}".replace("line 1: ", "")) from None
        if lx.i != len(raw):
            raise ParseError(f"unexpected text after the label set in series {text!r}")
        return finish_labels(name, pairs)
