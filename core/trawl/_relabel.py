"""Relabeling with Prometheus 2.42's semantics (``relabel_configs``, ``metric_relabel_configs``).

Regular expressions are RE2, as in Prometheus (Go's ``regexp``): patterns are compiled with
Google's RE2 (the ``google-re2`` package), fully anchored as ``^(?:...)$``, and the few forms
C++ RE2 accepts but Go rejects (``(?<name>...)``, ``\\C``) are rejected too. Replacement
templates follow Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import re2
from pydantic import Field, field_validator, model_validator

from ._model import SectionModel

Action = Literal["replace", "keep", "drop", "keepequal", "dropequal", "hashmod", "labelmap",
                 "labeldrop", "labelkeep", "lowercase", "uppercase"]

DEFAULT_REGEX = "(.*)"
DEFAULT_SEPARATOR = ";"
DEFAULT_REPLACEMENT = "$1"

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Prometheus's relabelTarget: a label name in which $1 / ${name} may appear.
_RELABEL_TARGET = re.compile(r"(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+\Z", re.ASCII)

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False


class RegexError(ValueError):
    """A pattern RE2 (as Go's ``regexp`` package) rejects."""


def compile_regex(pattern: str) -> Any:
    """Compile ``pattern`` anchored as Prometheus does: ``^(?:pattern)$``.

    Raises:
      RegexError: the pattern is not valid RE2 syntax as Go reads it.
    """
    _reject_non_go(pattern)
    try:
        return re2.compile(f"^(?:{pattern})$", _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise RegexError(f"invalid RE2 regex {pattern!r}: {detail}") from None


def _reject_non_go(pattern: str) -> None:
    """Forms C++ RE2 accepts and Go's ``regexp`` (Prometheus 2.42) rejects."""
    i = 0
    in_class = False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1:i + 2] == "C":
                raise RegexError(f"invalid RE2 regex {pattern!r}: invalid escape sequence: \\C")
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "^":
                i += 1
            if pattern[i + 1:i + 2] == "]":
                i += 1
        elif pattern.startswith("(?<", i) and pattern[i + 3:i + 4] not in ("=", "!"):
            raise RegexError(f"invalid RE2 regex {pattern!r}: invalid or unsupported Perl "
                             "syntax: (?<")
        i += 1


def expand(template: str, text: str, match: Any, names: Mapping[str, int]) -> str:
    """Go's ``Regexp.ExpandString``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``.

    ``$name`` takes the longest run of letters, digits and ``_``, so ``$1x`` means the group
    named ``1x`` (empty), not group 1 then ``x``; unknown groups expand to nothing.
    """
    if "$" not in template:
        return template
    out: list[str] = []
    rest = template
    while True:
        before, dollar, rest = rest.partition("$")
        out.append(before)
        if not dollar:
            break
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        name, after = _extract(rest)
        if name is None:
            out.append("$")
            continue
        rest = after
        index = _group_number(name)
        if index < 0:
            index = names.get(name, -1)
        if 0 <= index <= match.re.groups:
            start, end = match.span(index)
            if start >= 0:
                out.append(text[start:end])
    return "".join(out)


def _extract(s: str) -> tuple[str | None, str]:
    brace = s.startswith("{")
    body = s[1:] if brace else s
    i = 0
    while i < len(body) and (body[i] == "_" or _is_letter_or_digit(body[i])):
        i += 1
    if i == 0:
        return None, s
    name = body[:i]
    if brace:
        if i >= len(body) or body[i] != "}":
            return None, s
        i += 1
    return name, body[i:]


def _is_letter_or_digit(c: str) -> bool:
    if c.isascii():
        return c.isalnum()
    cat = unicodedata.category(c)
    return cat.startswith("L") or cat == "Nd"


def _group_number(name: str) -> int:
    if not name.isascii() or not name.isdigit() or len(name) > 8:
        return -1
    if name[0] == "0" and len(name) > 1:
        return -1
    return int(name)


def _go_lower(s: str) -> str:
    if s.isascii():
        return s.lower()
    return "".join(c if len(low := c.lower()) != 1 else low for c in s)


def _go_upper(s: str) -> str:
    if s.isascii():
        return s.upper()
    return "".join(c if len(up := c.upper()) != 1 else up for c in s)


class RelabelConfig(SectionModel):
    """One relabeling rule, as a TOML table with Prometheus's keys, hyphenated.

    ``source-labels``, ``separator`` (``";"``), ``target-label``, ``regex`` (``"(.*)"``),
    ``modulus``, ``replacement`` (``"$1"``) and ``action`` (``"replace"``).
    """

    source_labels: list[str] | None = None
    separator: str = DEFAULT_SEPARATOR
    regex: str | None = None
    modulus: int = Field(default=0, ge=0)
    target_label: str = ""
    replacement: str = DEFAULT_REPLACEMENT
    action: Action = "replace"

    @field_validator("action", mode="before")
    @classmethod
    def _lower_action(cls, value: Any) -> Any:
        if isinstance(value, str):
            lowered = value.lower()
            if lowered not in Action.__args__:  # type: ignore[attr-defined]
                raise ValueError(f"unknown relabel action {value!r}")
            return lowered
        return value

    @field_validator("source_labels")
    @classmethod
    def _label_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if not _LABEL_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid label name")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value)
        return value

    @model_validator(mode="after")
    def _prometheus_rules(self) -> RelabelConfig:
        action, target = self.action, self.target_label
        if self.modulus == 0 and action == "hashmod":
            raise ValueError("relabel configuration for hashmod requires non-zero modulus")
        if action in ("replace", "hashmod", "lowercase", "uppercase", "keepequal",
                      "dropequal") and not target:
            raise ValueError(f"relabel configuration for {action} action requires "
                             "'target-label' value")
        if action in ("replace", "lowercase", "uppercase") and not _RELABEL_TARGET.match(target):
            raise ValueError(f"{target!r} is invalid 'target-label' for {action} action")
        if action in ("lowercase", "uppercase", "keepequal", "dropequal") \
                and self.replacement != DEFAULT_REPLACEMENT:
            raise ValueError(f"'replacement' can not be set for {action} action")
        if action == "labelmap" and not _RELABEL_TARGET.match(self.replacement):
            raise ValueError(f"{self.replacement!r} is invalid 'replacement' for {action} action")
        if action == "hashmod" and not _LABEL_NAME.match(target):
            raise ValueError(f"{target!r} is invalid 'target-label' for {action} action")
        if action in ("keepequal", "dropequal") and (
            self.regex is not None or self.modulus or self.separator != DEFAULT_SEPARATOR
            or self.replacement != DEFAULT_REPLACEMENT
        ):
            raise ValueError(f"{action} action requires only 'source-labels' and "
                             "'target-label', and no other fields")
        if action in ("labeldrop", "labelkeep") and (
            self.source_labels is not None or target or self.modulus
            or self.separator != DEFAULT_SEPARATOR or self.replacement != DEFAULT_REPLACEMENT
        ):
            raise ValueError(f"{action} action requires only 'regex', and no other fields")
        return self


Labels = dict[str, str]


class Rule:
    """A compiled `RelabelConfig`; `apply` changes a label dict in place."""

    __slots__ = ("action", "modulus", "names", "regex", "replacement", "separator", "sources",
                 "target")

    def __init__(self, config: RelabelConfig) -> None:
        self.action = config.action
        self.sources = tuple(config.source_labels or ())
        self.separator = config.separator
        self.regex = compile_regex(DEFAULT_REGEX if config.regex is None else config.regex)
        self.names: Mapping[str, int] = dict(self.regex.groupindex)
        self.modulus = config.modulus
        self.target = config.target_label
        self.replacement = config.replacement

    def apply(self, labels: Labels) -> bool:
        """Apply the rule; ``False`` means the label set is dropped."""
        action = self.action
        get = labels.get
        val = self.separator.join([get(name, "") for name in self.sources])
        if action == "replace":
            m = self.regex.match(val)
            if m is None:
                return True
            target = expand(self.target, val, m, self.names)
            if not _LABEL_NAME.match(target):
                labels.pop(self.target, None)
                return True
            res = expand(self.replacement, val, m, self.names)
            if not res:
                labels.pop(self.target, None)
            else:
                labels[target] = res
        elif action == "keep":
            return self.regex.match(val) is not None
        elif action == "drop":
            return self.regex.match(val) is None
        elif action == "keepequal":
            return get(self.target, "") == val
        elif action == "dropequal":
            return get(self.target, "") != val
        elif action == "lowercase":
            _set(labels, self.target, _go_lower(val))
        elif action == "uppercase":
            _set(labels, self.target, _go_upper(val))
        elif action == "hashmod":
            digest = hashlib.md5(val.encode("utf-8", "surrogateescape")).digest()
            labels[self.target] = str(int.from_bytes(digest[8:], "big") % self.modulus)
        elif action == "labelmap":
            match = self.regex.match
            for name, value in sorted(labels.items()):
                m = match(name)
                if m is not None:
                    _set(labels, expand(self.replacement, name, m, self.names), value)
        elif action == "labeldrop":
            for name in [n for n in labels if self.regex.match(n) is not None]:
                del labels[name]
        elif action == "labelkeep":
            for name in [n for n in labels if self.regex.match(n) is None]:
                del labels[name]
        return True


def _set(labels: Labels, name: str, value: str) -> None:
    """Prometheus's ``labels.Builder.Set``: an empty value deletes the label."""
    if value:
        labels[name] = value
    else:
        labels.pop(name, None)


class Relabeler:
    """A chain of rules: ``relabeler(labels)`` is the new label set, or ``None`` if dropped."""

    def __init__(self, configs: Sequence[RelabelConfig]) -> None:
        self.rules = [Rule(c) for c in configs]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __call__(self, labels: Mapping[str, str]) -> Labels | None:
        out = dict(labels)
        for rule in self.rules:
            if not rule.apply(out):
                return None
        return out


def relabeler(configs: Sequence[RelabelConfig]) -> Callable[[Mapping[str, str]], Labels | None] \
        | None:
    """A `Relabeler` for ``configs``, or ``None`` when there are no rules."""
    return Relabeler(configs) if configs else None
