"""The parsing corpus (``corpus.txt``): exposition cases with their content types."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trawl._parsing import ParseError, Parser, format_value

CORPUS = Path(__file__).with_name("corpus.txt")
EXPECTED = Path(__file__).with_name("expected.json")
"""What Prometheus 2.42 did with each case: ``{name: {up, error, series, count}}``."""
TEXT_CT = "text/plain; version=0.0.4"
OM_CT = "application/openmetrics-text; version=1.0.0"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    content_type: str
    countonly: bool = False


def _bytes(line: str) -> bytes:
    out = bytearray()
    for part in re.split(r"(\\x[0-9a-fA-F]{2})", line):
        if re.fullmatch(r"\\x[0-9a-fA-F]{2}", part):
            out.append(int(part[2:], 16))
        else:
            out += part.encode("utf-8")
    return bytes(out)


def load_cases(now: float | None = None) -> list[Case]:
    """Every case of the corpus, with ``@NOW_MS@``/``@NOW_S@`` 30 s before ``now``."""
    stamp = (time.time() if now is None else now) - 30
    cases: list[Case] = []
    head: list[str] | None = None
    body: list[str] = []

    def flush() -> None:
        if head is None:
            return
        name, flags, ct = head[0], head[1:-1], head[-1]
        raw = b"".join(_bytes(line) + b"\n" for line in body)
        if "noeol" in flags and raw:
            raw = raw[:-1]
        raw = raw.replace(b"@NOW_MS@", str(int(stamp * 1000)).encode())
        raw = raw.replace(b"@NOW_S@", str(int(stamp)).encode())
        if not ct:
            ct = OM_CT if name.startswith("om-") else TEXT_CT
        cases.append(Case(name, raw, ct, "countonly" in flags))

    for line in CORPUS.read_text(encoding="utf-8").split("\n"):
        if line.startswith("=== "):
            flush()
            rest, _, ct = line[4:].partition(" ct=")
            words = rest.split()
            head = [words[0], *words[1:], ct if " ct=" in line else ""]
            body = []
        elif head is not None:
            body.append(line)
    if body and body[-1] == "":
        body.pop()
    flush()
    return cases


def read_both(parser: Parser, body: bytes) -> tuple[list[Any] | None, str]:
    """A body read by both of a parser's routes, which must agree.

    The scrape loop's route is ``parse`` then ``parse_series`` per series; ``trawl parse``
    uses ``parse_all``. Returns the samples (values as Prometheus's API prints them), or
    ``None`` and ``parse_all``'s error.
    """
    try:
        scraped = parser.parse(body)
        fast: list[Any] | None = [(*parser.parse_series(text), format_value(v), ts)
                                  for text, v, ts in scraped.samples]
    except ParseError:
        fast = None
    error = ""
    full: list[Any] | None = None
    try:
        full = [(n, lab, format_value(v), ts) for n, lab, v, ts in parser.parse_all(body)]
    except ParseError as exc:
        error = str(exc)
    if full is None:
        if fast is not None:
            raise AssertionError(f"parse() accepted what parse_all() rejects: {error}")
        return None, error
    if fast is None:
        raise AssertionError("parse_all() accepted what parse() rejects")
    if fast != full:
        raise AssertionError(f"parse() read {fast}, parse_all() read {full}")
    return full, ""


def normalized_error(message: str) -> str:
    """An error without the label set Prometheus prints in "invalid metric name" errors
    (it includes the target's labels, which a parser does not know)."""
    if message.startswith("invalid metric name or label names: "):
        return message.split("{", 1)[0].rstrip()
    return message


def sorted_series(series: Iterable[list[Any]]) -> list[list[Any]]:
    """``[name, labels, value]`` items in a stable order."""
    return sorted(series, key=lambda s: (s[0], sorted(s[1].items()), s[2]))


def parser_kind(content_type: str) -> str:
    """The kind of parser a scrape uses for this ``Content-Type`` (text when none claims it)."""
    from trawl._plugins import collect, get_plugin_manager

    cls = collect(get_plugin_manager(load_entrypoints=False)).parser_for(content_type)
    return cls.kind if cls is not None else "prometheus-text"


_NAMES = ["a", "foo_total", "h_bucket", ":c", "x1"]
_VALUES = ["1", "-0", "2.5e-3", "NaN", "+Inf", "-Inf", ".5", "5.", "1e21", "007", "-1.5E+2",
           "inf", "1e-7"]
_LABEL_PIECES = [*"ab {}=,#é }", "\\\\", '\\"', "\\n"]
_EDIT_BYTES = b' \t\n"\\{},=#x0.\x00\xff\r e+-I_p:9'


def generated_cases(seed: int, count: int) -> list[Case]:
    """Random near-valid bodies: valid lines, mostly with one to three bytes inserted,
    deleted or replaced; half text format, half OpenMetrics. Deterministic for a seed."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        om = i % 2 == 1
        lines = []
        for _ in range(rng.randint(1, 6)):
            name = rng.choice(_NAMES)
            if rng.random() < 0.2:
                word = rng.choice(["HELP", "TYPE", "UNIT"] if om else ["HELP", "TYPE"])
                text = {"HELP": "help text", "TYPE": rng.choice(["gauge", "counter"]),
                        "UNIT": ""}[word]
                lines.append(f"# {word} {name} {text}")
                continue
            labels = {rng.choice(["x", "y", "le", "_z"]): "".join(
                rng.choice(_LABEL_PIECES) for _ in range(rng.randint(0, 4)))
                for _ in range(rng.randint(0, 3))}
            inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
            line = f"{name}{{{inner}}} " if labels or rng.random() < 0.3 else f"{name} "
            line += rng.choice(_VALUES)
            if om and name in ("foo_total", "h_bucket") and rng.random() < 0.3:
                line += ' # {t="x"} 0.5'
            lines.append(line)
        body = ("\n".join(lines) + "\n" + ("# EOF\n" if om else "")).encode()
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            pos = rng.randint(0, len(body))
            byte = bytes([rng.choice(_EDIT_BYTES)])
            edit = rng.choice(["insert", "delete", "replace"])
            rest = body[pos + 1:] if edit != "insert" else body[pos:]
            body = body[:pos] + (b"" if edit == "delete" else byte) + rest
        cases.append(Case(f"{'om' if om else 'text'}-generated-{seed}-{i}", body,
                          OM_CT if om else TEXT_CT))
    return cases
