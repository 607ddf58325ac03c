"""Exceptions trawl raises on purpose."""

from __future__ import annotations


class TrawlError(Exception):
    """Base class of trawl's own errors."""


class PluginError(TrawlError):
    """A plugin is broken: a kind registered twice, a class without ``kind`` or ``Config``."""


class ConfigError(TrawlError):
    """The configuration has problems; ``problems`` lists each one as a readable line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
