"""Member data decoded as Go's ``encoding/json`` decodes it into Prometheus's structs.

Prometheus reads serverset and nerve members with ``json.Unmarshal`` into plain Go structs,
so the same bytes must give the same labels here. What that means:

- object keys match field names case-insensitively (``ServiceEndpoint``, ``serviceendpoint``);
  unknown keys are ignored;
- a missing field, or a JSON ``null``, leaves the field at its zero value (``""``, ``0``,
  no map); a whole document ``null`` is a member with every field zero;
- an integer field takes only an integral JSON number within int64: ``80.0``, ``8e1`` and
  ``"80"`` are errors;
- a value of the wrong type anywhere makes the whole member an error;
- a repeated key decodes again into the same field: objects merge, the last scalar wins;
- ``NaN`` and ``Infinity`` are not JSON; bytes that are not UTF-8, and escaped lone
  surrogates, become U+FFFD.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class GoJSONError(ValueError):
    """Data that Go's ``json.Unmarshal`` would reject for the given struct."""


@dataclass(frozen=True)
class Struct:
    """A Go struct: each field's JSON name (its tag, or the Go field name) and its type.

    A field's type is ``str``, ``int``, another `Struct` or a `MapOf`.
    """

    fields: Mapping[str, Any]

    def field_for(self, key: str) -> str | None:
        """The field a JSON key decodes into, matched as Go matches it (case folding)."""
        folded = _fold(key)
        for name in self.fields:
            if folded == name.lower():
                return name
        return None


@dataclass(frozen=True)
class MapOf:
    """A Go ``map[string]T``."""

    elem: Any


class _Object:
    """A JSON object with its keys in order, repeated keys included."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


class _Fraction:
    """A JSON number with a fraction or an exponent (never a Go int)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _fold(key: str) -> str | None:
    # Go's field matching folds ASCII case, plus the two non-ASCII letters whose simple
    # case folding is an ASCII letter: U+017F (long s) and U+212A (Kelvin sign).
    key = key.replace("\u017f", "s").replace("\u212a", "k")
    return key.lower() if key.isascii() else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def loads(data: bytes) -> Any:
    """Parse JSON as Go does; objects come back as `_Object`, fractions as `_Fraction`."""
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text, object_pairs_hook=_Object, parse_float=_Fraction,
                          parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise GoJSONError(f"invalid JSON: {exc}") from None


def zero(schema: Any) -> Any:
    """The Go zero value of a schema: ``""``, ``0``, a struct of zeros, or no map (None)."""
    if schema is str:
        return ""
    if schema is int:
        return 0
    if isinstance(schema, Struct):
        return {name: zero(t) for name, t in schema.fields.items()}
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | _Fraction):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, _Object):
        return "an object"
    return "an array"


def decode(value: Any, schema: Any, current: Any, where: str) -> Any:
    """Decode a parsed JSON value into ``current`` (a value of ``schema``); return the result."""
    if value is None:
        return current
    if schema is str:
        if isinstance(value, str):
            # Go turns an escaped lone surrogate ("\\ud800") into U+FFFD.
            return _LONE_SURROGATE.sub("\ufffd", value)
        raise GoJSONError(f"{where or 'value'}: expected a string, got {_kind(value)}")
    if schema is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if INT64_MIN <= value <= INT64_MAX:
                return value
            raise GoJSONError(f"{where or 'value'}: {value} does not fit a 64-bit integer")
        if isinstance(value, _Fraction):
            raise GoJSONError(f"{where or 'value'}: {value.text} is not an integer")
        raise GoJSONError(f"{where or 'value'}: expected an integer, got {_kind(value)}")
    if not isinstance(value, _Object):
        raise GoJSONError(f"{where or 'value'}: expected an object, got {_kind(value)}")
    prefix = f"{where}." if where else ""
    if isinstance(schema, Struct):
        out = dict(current)
        for key, item in value.pairs:
            name = schema.field_for(key)
            if name is not None:
                out[name] = decode(item, schema.fields[name], out[name], prefix + key)
        return out
    elems = dict(current or {})
    for key, item in value.pairs:
        # Go decodes each map element into a fresh zero value.
        elems[key] = decode(item, schema.elem, zero(schema.elem), prefix + key)
    return elems


def unmarshal(data: bytes, schema: Struct) -> dict[str, Any]:
    """``json.Unmarshal(data, &v)`` for a struct ``v`` of ``schema``; raises `GoJSONError`."""
    result: dict[str, Any] = decode(loads(data), schema, zero(schema), "")
    return result
