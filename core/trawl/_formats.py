"""How a scraped series maps to InfluxDB: the scraper's ``format`` key.

- ``kapacitor`` (default): measurement = metric name, one field ``value``, labels as tags.
- ``telegraf-v1``: Telegraf's prometheus input with ``metric_version = 1``: measurement =
  metric family name; counters in field ``counter``, gauges ``gauge``, untyped ``value``;
  a histogram or summary is one point per label set with a field per bucket (``le``) or
  quantile, plus ``sum`` and ``count``.
- ``telegraf-v2``: ``metric_version = 2``: measurement ``prometheus``, field = metric name,
  ``le`` and ``quantile`` as tags.

The fields of one Telegraf v1 point are written as separate lines that share measurement,
tags and timestamp: InfluxDB stores them as one point, as if written on one line. Bucket
and quantile bounds are printed as Go's ``fmt.Sprint`` prints a float (``1e+06``, ``+Inf``),
as Telegraf does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import Decimal

from ._batch import Series

FORMATS = ("kapacitor", "telegraf-v1", "telegraf-v2")

Mapper = Callable[[str, dict[str, str], Mapping[str, str]], Series]
"""``(metric name, labels without __name__, family types) -> Series``."""


def go_float(value: float) -> str:
    """A float as Go's ``strconv.FormatFloat(f, 'g', -1, 64)`` (and ``fmt.Sprint``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign, digit_tuple, exp = Decimal(repr(value)).as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0") or "0"
    if digits == "0":
        return "-0" if sign else "0"
    stripped = digits.rstrip("0")
    exp += len(digits) - len(stripped)
    digits = stripped
    nd = len(digits)
    dp = nd + exp  # position of the decimal point
    e = dp - 1
    prefix = "-" if sign else ""
    if e < -4 or e >= 6:  # Go's shortest %g switches to %e at an exponent of 6
        mantissa = digits[0] + ("." + digits[1:] if nd > 1 else "")
        return f"{prefix}{mantissa}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if dp <= 0:
        return f"{prefix}0.{'0' * -dp}{digits}"
    if dp >= nd:
        return prefix + digits + "0" * (dp - nd)
    return f"{prefix}{digits[:dp]}.{digits[dp:]}"


def _bound(raw: str) -> str:
    try:
        return go_float(float(raw))
    except ValueError:
        return raw


def _family(name: str, types: Mapping[str, str]) -> tuple[str, str, str]:
    """``(family, type, role)``; role is ``bucket``, ``sum``, ``count`` or ``""``."""
    kind = types.get(name)
    if kind is not None:
        return name, kind, ""
    for suffix, role in (("_bucket", "bucket"), ("_sum", "sum"), ("_count", "count")):
        if name.endswith(suffix):
            family = name[: -len(suffix)]
            kind = types.get(family)
            if kind in ("histogram", "summary") and not (role == "bucket" and kind == "summary"):
                return family, kind, role
    return name, "untyped", ""


def kapacitor(name: str, tags: dict[str, str], types: Mapping[str, str]) -> Series:
    return Series(name, tags)


_V1_FIELDS = {"counter": "counter", "gauge": "gauge"}


def telegraf_v1(name: str, tags: dict[str, str], types: Mapping[str, str]) -> Series:
    family, kind, role = _family(name, types)
    if kind == "histogram":
        if role == "bucket":
            bound = tags.pop("le", "")
            return Series(family, tags, _bound(bound))
        if role:
            return Series(family, tags, role)
    elif kind == "summary":
        if role:
            return Series(family, tags, role)
        if "quantile" in tags:
            quantile = tags.pop("quantile")
            return Series(family, tags, _bound(quantile))
    return Series(name, tags, _V1_FIELDS.get(kind, "value"))


def telegraf_v2(name: str, tags: dict[str, str], types: Mapping[str, str]) -> Series:
    _, kind, role = _family(name, types)
    if kind == "histogram" and role == "bucket" and "le" in tags:
        tags["le"] = _bound(tags["le"])
    elif kind == "summary" and not role and "quantile" in tags:
        tags["quantile"] = _bound(tags["quantile"])
    return Series("prometheus", tags, name)


MAPPERS: dict[str, Mapper] = {
    "kapacitor": kapacitor,
    "telegraf-v1": telegraf_v1,
    "telegraf-v2": telegraf_v2,
}
