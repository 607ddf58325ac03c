"""The live status line of ``trawl run`` on a terminal.

About every second it redraws one line at the bottom of standard error::

    trawl · targets 12 up, 1 down · 640 samples/s · sink out: queue 0, spool 0 B

Log records are written above it (see `trawl._logging.TerminalHandler`). It is only
started when standard error is a terminal, so logs sent to a file or a pipe stay plain.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING

import trio

from ._logging import TerminalHandler

if TYPE_CHECKING:
    from ._host import Host

REDRAW_SECONDS = 1.0
RATE_WINDOW_SECONDS = 10.0


def human_bytes(size: float) -> str:
    """``0 B``, ``512 B``, ``1.5 KiB``, ``20 MiB`` ..."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            if unit == "B":
                return f"{int(size)} B"
            return f"{size:.1f} {unit}" if size < 10 else f"{size:.0f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class SampleRate:
    """Samples scraped per second over the last `RATE_WINDOW_SECONDS` (or since start).

    Each tick counts, for every target, the scrapes made since the previous tick times the
    samples of its last scrape.
    """

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self.window = window
        self._seen: dict[int, int] = {}
        self._events: deque[tuple[float, int]] = deque()
        self._start: float | None = None

    def tick(self, host: Host, now: float) -> float:
        first = self._start is None
        if self._start is None:
            self._start = now
        seen: dict[int, int] = {}
        new = 0
        for pool in host.pools:
            for loop, _ in pool.loops.values():
                h = loop.health
                # Targets present at the first tick count from now; later ones from 0.
                before = self._seen.get(id(loop), h.scrapes if first else 0)
                new += max(h.scrapes - before, 0) * h.samples
                seen[id(loop)] = h.scrapes
        self._seen = seen
        self._events.append((now, new))
        while self._events and self._events[0][0] <= now - self.window:
            self._events.popleft()
        span = min(self.window, now - self._start)
        return sum(n for _, n in self._events) / span if span > 0 else 0.0


def status_text(host: Host, rate: float, width: int = 0) -> str:
    """The status line for a host's current state, cut to ``width`` columns (if > 0)."""
    up = down = unknown = 0
    for pool in host.pools:
        for loop, _ in pool.loops.values():
            health = loop.health.health
            if health == "up":
                up += 1
            elif health == "down":
                down += 1
            else:
                unknown += 1
    targets = f"targets {up} up, {down} down"
    if unknown:
        targets += f", {unknown} unknown"
    parts = ["trawl", targets, f"{rate:,.0f} samples/s"]
    for name, runner in host.sinks.items():
        st = runner.stats
        parts.append(f"sink {name}: queue {st.queue_points:,}, "
                     f"spool {human_bytes(st.spool_bytes)}")
    if not host.ready.is_set():
        parts.append("starting")
    text = " · ".join(parts)
    if width > 0 and len(text) > width - 1:
        text = text[: max(width - 2, 0)] + "…"
    return text


async def run_status(host: Host, handler: TerminalHandler, *,
                     interval: float = REDRAW_SECONDS,
                     columns: int | None = None) -> None:
    """Redraw the status line every ``interval`` seconds until cancelled, then erase it.

    Args:
      columns: The terminal's width (default: asked each time, so a resized terminal
        gets a line that fits).
    """
    rate = SampleRate()
    try:
        while True:
            width = columns or _terminal_width(handler)
            handler.show_status(status_text(host, rate.tick(host, trio.current_time()), width))
            await trio.sleep(interval)
    finally:
        handler.show_status("")


def _terminal_width(handler: TerminalHandler) -> int:
    try:
        return os.get_terminal_size(handler.stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 100
