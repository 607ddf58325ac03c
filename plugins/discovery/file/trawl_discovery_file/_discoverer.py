from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import trawl
import trio
import yaml
from pydantic import Field, field_validator

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_EXTENSIONS = (".json", ".yml", ".yaml")
POLL_SECONDS = 0.5


class FileDiscoveryConfig(trawl.DiscovererConfig):
    """``[[file-discovery]]``: Kapacitor's ``enabled``, ``id``, ``files``, ``refresh-interval``."""

    files: list[str] = Field(default_factory=list)
    refresh_interval: trawl.Duration = 300.0

    @field_validator("files")
    @classmethod
    def _extensions(cls, files: list[str]) -> list[str]:
        for pattern in files:
            if not pattern.endswith(_EXTENSIONS):
                raise ValueError(
                    f"{pattern!r}: file patterns must end in .json, .yml or .yaml"
                )
        return files


class FileFormatError(ValueError):
    """A file_sd file that is not a list of ``{targets, labels}`` groups."""


def read_groups(path: str) -> list[trawl.TargetGroup]:
    """Read one file_sd file (JSON or YAML by extension) into groups ``<path>:<index>``."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".json"):
            data: Any = json.loads(raw)
        else:
            data = yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise FileFormatError(f"{path}: cannot parse: {exc}") from None
    if data is None:
        data = []
    if not isinstance(data, list):
        raise FileFormatError(f"{path}: expected a list of target groups")
    groups = []
    for index, entry in enumerate(data):
        where = f"{path}: group {index}"
        if not isinstance(entry, dict):
            raise FileFormatError(f"{where}: expected an object with targets and labels")
        unknown = set(entry) - {"targets", "labels"}
        if unknown:
            raise FileFormatError(f"{where}: unknown field(s) {sorted(unknown)}")
        targets = entry.get("targets") or []
        labels = entry.get("labels") or {}
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise FileFormatError(f"{where}: targets must be a list of strings")
        if not isinstance(labels, dict):
            raise FileFormatError(f"{where}: labels must be an object")
        for key, value in labels.items():
            if not isinstance(key, str) or not _LABEL_NAME.match(key):
                raise FileFormatError(f"{where}: invalid label name {key!r}")
            if not isinstance(value, str):
                raise FileFormatError(f"{where}: label {key!r} must be a string")
        for t in targets:
            if "/" in t:
                raise FileFormatError(f"{where}: {t!r} is not a valid target address")
        merged = {**labels, "__meta_filepath": path}
        groups.append(trawl.group(f"{path}:{index}", [{"__address__": t} for t in targets],
                                  merged))
    return groups


class FileDiscoverer(trawl.RefreshDiscoverer):
    """Reads every file matching ``files``; reacts to changes within about a second.

    A file that cannot be read or parsed keeps its last good targets and is reported in
    the discoverer's health.
    """

    kind = "file-discovery"
    Config = FileDiscoveryConfig
    config: FileDiscoveryConfig

    def __init__(self, config: FileDiscoveryConfig) -> None:
        super().__init__(config)
        self._good: dict[str, list[trawl.TargetGroup]] = {}
        self._stamps: dict[str, tuple[int, int, int]] = {}

    def _paths(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.config.files:
            found.update(p for p in glob.glob(pattern) if p.endswith(_EXTENSIONS))
        return sorted(found)

    def _stamp(self) -> dict[str, tuple[int, int, int]]:
        stamps = {}
        for path in self._paths():
            try:
                st = os.stat(path)
            except OSError:
                continue
            stamps[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return stamps

    async def refresh(self) -> list[trawl.TargetGroup]:
        stamps = await trio.to_thread.run_sync(self._stamp)
        self._stamps = stamps
        errors = []
        for path in list(self._good):
            if path not in stamps:
                del self._good[path]
        for path in stamps:
            try:
                self._good[path] = await trio.to_thread.run_sync(read_groups, path)
            except (OSError, FileFormatError) as exc:
                errors.append(str(exc))
        groups = [g for path in sorted(self._good) for g in self._good[path]]
        if errors:
            # Every other file's groups go out; a bad file keeps its last good groups.
            raise trawl.PartialRefresh("; ".join(errors), groups)
        return groups

    async def wait_for_change(self, deadline: float) -> None:
        while trio.current_time() < deadline:
            await trio.sleep_until(min(deadline, trio.current_time() + POLL_SECONDS))
            if await trio.to_thread.run_sync(self._stamp) != self._stamps:
                return
