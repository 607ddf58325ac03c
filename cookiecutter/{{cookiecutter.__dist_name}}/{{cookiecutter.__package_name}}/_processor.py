{%- set c = cookiecutter -%}
"""The processor and its configuration.

Replace `process` with your transform, and the configuration with its keys.
"""

from __future__ import annotations

import trawl
from pydantic import field_validator


class {{ c.__class_prefix }}ProcessorConfig(trawl.ProcessorConfig):
    """An entry of ``[[scraper.processors]]``: ``kind``, ``tags``, ``overwrite``.

    Unknown keys are errors.
    """

    tags: dict[str, str]
    overwrite: bool = False

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if not tags:
            raise ValueError("give at least one tag, such as tags = { dc = \"eu\" }")
        for key, value in tags.items():
            if not key or not value:
                raise ValueError(f"tag {key!r} = {value!r}: keys and values must not be empty")
        return tags


class {{ c.__class_prefix }}Processor(trawl.Processor):
    """Adds the configured tags to every scraped point of its scraper.

    One instance serves every target of the scraper, and `process` runs on the Trio thread
    for each scrape, so it is quick and never blocks. Tagged series are remembered, so a
    steady target costs one dictionary look-up per point; the memory is bounded by
    ``max_series`` (past it, everything is forgotten and rebuilt as needed, which also
    forgets series that disappeared).
    """

    kind = "{{ c.__section }}"
    Config = {{ c.__class_prefix }}ProcessorConfig
    config: {{ c.__class_prefix }}ProcessorConfig
    max_series: int = 100_000

    def __init__(self, config: {{ c.__class_prefix }}ProcessorConfig) -> None:
        super().__init__(config)
        self._tagged: dict[trawl.Series, trawl.Series] = {}

    def process(self, points: list[trawl.Point]) -> list[trawl.Point]:
        if len(self._tagged) > self.max_series:
            self._tagged.clear()
        tagged = self._tagged
        out: list[trawl.Point] = []
        for series, value, ts in points:
            new = tagged.get(series)
            if new is None:
                new = tagged[series] = self._tag(series)
            out.append((new, value, ts))
        return out

    def _tag(self, series: trawl.Series) -> trawl.Series:
        if self.config.overwrite:
            tags = {**series.tags, **self.config.tags}
        else:
            tags = {**self.config.tags, **series.tags}
        return trawl.Series(series.measurement, tags, series.field)
