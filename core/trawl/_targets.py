"""Targets as label sets, grouped the way Prometheus service discovery groups them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ADDRESS = "__address__"
SCHEME = "__scheme__"
METRICS_PATH = "__metrics_path__"
PARAM_PREFIX = "__param_"
META_PREFIX = "__meta_"

Labels = dict[str, str]


@dataclass(frozen=True)
class TargetGroup:
    """A snapshot of the targets one ``source`` of a discoverer knows.

    Args:
      source: Unique within its discoverer (a file name, a service name, a ZooKeeper path).
        A later group with the same source replaces this one; an empty group removes it.
      targets: One label set per target; each has ``__address__`` and may carry
        ``__meta_*`` labels of its own.
      labels: Labels common to every target of the group. A target's own label wins.
    """

    source: str
    targets: tuple[Mapping[str, str], ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def target_labels(self) -> list[Labels]:
        """Each target's discovered labels: group labels, then the target's own; empty
        values are left out."""
        out = []
        for target in self.targets:
            merged = dict(self.labels)
            merged.update(target)
            # As Prometheus's label builder: an empty value is no label at all.
            out.append({k: v for k, v in merged.items() if v})
        return out


def group(source: str, targets: Sequence[Mapping[str, str]],
          labels: Mapping[str, str] | None = None) -> TargetGroup:
    """Build a `TargetGroup`, copying the mappings so the sender may reuse its own."""
    return TargetGroup(source, tuple(dict(t) for t in targets), dict(labels or {}))
