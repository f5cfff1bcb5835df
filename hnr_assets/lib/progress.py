"""Progress of long loops (generation, mining, training, encoding) for the Dagster event log.

`Progress` calls a log function at most every `every_seconds` (and at the end) with the percentage,
rate and estimated time left, e.g. `bm25_negatives: 42.0% (386/919) 51.3 queries/s, ETA 10 s`.
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
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = _fmt_seconds(eta) if eta != float("inf") else "unknown"
        return f"{self.label}: {pct:.1f}% ({self.done}/{self.total}) {rate:.1f} {self.unit}/s, ETA {eta_text}"

    def update(self, n: int = 1) -> None:
        """Count `n` more items done; log if enough time has passed or everything is done."""
        self.done += n
        now = self.clock()
        if now - self.last_logged >= self.every or (self.total and self.done >= self.total):
            self.last_logged = now
            self.log(self.message())

    def rate(self) -> float:
        return self.done / max(self.clock() - self.started, 1e-9)
