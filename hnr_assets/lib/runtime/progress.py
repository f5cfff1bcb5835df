"""Progress of long loops (generation, mining, training, encoding) for the Dagster event log.

`Progress` calls a log function at most every `every_seconds` (and at the end) with the percentage,
rate and estimated time left, e.g. `bm25_negatives: 42.0% (386/919) 51.3 queries/s, ETA 10 s`. Below
one item per second the rate is given as time per item (`llm_negatives[g]: 25.0% (10/40) 28 s/pair,
ETA 14 min 00 s`), so that slow steps (generation, training) do not read `0.0 pairs/s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _fmt_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _singular(unit: str) -> str:
    """`pairs` -> `pair`, `queries` -> `query`, `passages` -> `passage` (the unit of a time per item)."""
    if unit.endswith("ies"):
        return unit[:-3] + "y"
    if unit.endswith("s") and not unit.endswith("ss"):
        return unit[:-1]
    return unit


def format_rate(done: int, seconds: float, unit: str) -> str:
    """`51.3 queries/s` at one item per second or more, else the time per item (`28 s/pair`, `1.6 s/step`).

    Args:
        done: Items finished.
        seconds: Time they took.
        unit: Plural name of an item.

    Returns:
        The rate as text; `rate unknown` before the first item.
    """
    if done <= 0 or seconds <= 0:
        return "rate unknown"
    rate = done / seconds
    if rate >= 1.0:
        return f"{rate:.1f} {unit}/s"
    per_item = seconds / done
    text = f"{per_item:.1f} s" if per_item < 10 else _fmt_seconds(per_item)
    return f"{text}/{_singular(unit)}"


class Progress:
    """Rate-limited progress messages.

    Args:
        label: What is progressing (asset name and partition, say).
        total: Number of items expected.
        log: Where messages go (`context.log.info` in an asset).
        unit: Name of one item, for the rate.
        every_seconds: Minimum time between two messages.
        clock: Time source (tests pass a fake one).
    """

    def __init__(
        self,
        label: str,
        total: int,
        log: Callable[[str], None],
        unit: str = "items",
        every_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.log, self.unit = label, max(int(total), 0), log, unit
        self.every = every_seconds
        self.clock = clock
        self.started = clock()
        self.last_logged = self.started
        self.done = 0

    def message(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_text = _fmt_seconds(max(self.total - self.done, 0) / rate) if rate > 0 else "unknown"
        rate_text = format_rate(self.done, elapsed, self.unit)
        return f"{self.label}: {pct:.1f}% ({self.done}/{self.total}) {rate_text}, ETA {eta_text}"

    def update(self, n: int = 1) -> None:
        """Count `n` more items done; log if enough time has passed or everything is done."""
        self.done += n
        now = self.clock()
        if now - self.last_logged >= self.every or (self.total and self.done >= self.total):
            self.last_logged = now
            self.log(self.message())

    def rate(self) -> float:
        return self.done / max(self.clock() - self.started, 1e-9)
