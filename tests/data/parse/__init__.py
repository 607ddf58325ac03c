"""The parsing corpus (``corpus.txt``): exposition cases with their content types."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus.txt")
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
