"""Base pydantic models for configuration sections, in Kapacitor's hyphenated style."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, SecretStr

from ._duration import format_duration, parse_duration


def _hyphenate(name: str) -> str:
    return name.replace("_", "-")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""Seconds, written in TOML as a Go duration string such as ``"1m0s"``."""

_BYTE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
               "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_byte_size(value: object) -> int:
    """Bytes from an integer or a string such as ``"64MB"`` (units are powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as \"64MB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        number = text.rstrip("bBkKmMgGtTiI ")
        unit = text[len(number):].strip().lower()
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if unit in _BYTE_UNITS and amount >= 0:
            return int(amount * _BYTE_UNITS[unit])
    raise ValueError(f"invalid size {value!r}: use bytes or a unit such as \"512MB\"")


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
"""Bytes, written as an integer or with a unit (``"64MB"``, ``"1GiB"``; powers of 1024)."""

Secret = SecretStr
"""A string that never appears in logs, errors or API answers (``password``, tokens)."""


class SectionModel(BaseModel):
    """Configuration of one TOML section: unknown keys are errors, keys are hyphenated."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=_hyphenate,
        populate_by_name=True,
        frozen=True,
        validate_default=True,
    )


class DiscovererConfig(SectionModel):
    """Keys every discoverer section has (Kapacitor's ``enabled`` and ``id``)."""

    enabled: bool = True
    id: str = ""


class SinkConfig(SectionModel):
    """Keys every sink section has: Kapacitor's ``enabled``, ``name`` and ``default``, and
    the delivery keys trawl's sink runner reads for every sink (queue, spool, retries)."""

    enabled: bool = True
    name: str = ""
    default: bool = False
    queue_size: int = Field(default=100_000, ge=1)
    spool_dir: str = ""
    spool_max_size: ByteSize = 512 << 20
    retry_initial_interval: Duration = 0.5
    retry_max_interval: Duration = 30.0


class ProcessorConfig(SectionModel):
    """Keys every ``[[scraper.processors]]`` entry has: the processor ``kind``."""

    kind: str


def dump_public(model: BaseModel) -> dict[str, Any]:
    """The model as TOML-style keys, with secrets masked."""
    return model.model_dump(by_alias=True, mode="json")
