"""The processor contract: synchronous transforms of scraped points."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ._batch import Point
from ._model import ProcessorConfig


class Processor(ABC):
    """A processor transforms the points of one scrape before they reach the sinks.

    Processors run on the Trio thread between parsing and delivery, so ``process`` must
    be quick and must never block. State kept across scrapes (rates, windows) must be
    bounded and must forget series that disappear.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[ProcessorConfig]] = ProcessorConfig

    def __init__(self, config: ProcessorConfig) -> None:
        self.config = config

    @abstractmethod
    def process(self, points: list[Point]) -> list[Point]:
        """Return the points to pass on (the list may be changed in place)."""
