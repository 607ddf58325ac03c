"""Go-style durations (``"1m0s"``, ``"10s"``, ``"1h30m"``, ``"500ms"``) as Kapacitor writes."""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: object) -> float:
    """Return the duration in seconds.

    Accepts Go's ``time.ParseDuration`` syntax. A bare integer is nanoseconds, as a Go
    ``time.Duration`` in TOML is (``timeout = 0`` in Kapacitor's sample); a bare float
    is seconds.

    Raises:
      ValueError: the text is not a duration; the message says why.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as \"10s\", got {value!r}")
    if isinstance(value, int):
        return value * 1e-9
    if isinstance(value, float):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as \"10s\", got {value!r}")
    text = value.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if not text:
        raise ValueError(f"invalid duration {value!r}")
    pos = 0
    total = 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None:
            rest = text[pos:]
            if re.match(r"\d", rest) and not re.search(r"[a-zµμ]", rest):
                raise ValueError(f"invalid duration {value!r}: missing unit (ns, us, ms, s, m, h)")
            raise ValueError(f"invalid duration {value!r}: unknown unit in {rest!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float) -> str:
    """Format seconds as Go's ``Duration.String()`` does (``60`` → ``"1m0s"``)."""
    if seconds == 0:
        return "0s"
    sign = "-" if seconds < 0 else ""
    ns = round(abs(seconds) * 1e9)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1e3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1e6)}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1e9)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _trim(x: float) -> str:
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def prom_duration(seconds: float) -> str:
    """A duration as Prometheus's ``model.Duration`` prints it (``60`` → ``"1m"``)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = ""
    for unit, size in (("y", 31_536_000_000), ("w", 604_800_000), ("d", 86_400_000),
                       ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            count, ms = divmod(ms, size)
            out += f"{count}{unit}"
    return out
