"""Base pydantic models for configuration sections, in Kapacitor's hyphenated style."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, SecretStr

from ._duration import format_duration, parse_duration


def _hyphenate(name: str) -> str:
    return name.replace("_", "-")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""Seconds, written in TOML as a Go duration string such as ``"1m0s"``."""

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
    """Keys every sink section has (Kapacitor's ``enabled``, ``name`` and ``default``)."""

    enabled: bool = True
    name: str = ""
    default: bool = False


class ProcessorConfig(SectionModel):
    """Keys every ``[[scraper.processors]]`` entry has: the processor ``kind``."""

    kind: str


def dump_public(model: BaseModel) -> dict[str, Any]:
    """The model as TOML-style keys, with secrets masked."""
    return model.model_dump(by_alias=True, mode="json")
