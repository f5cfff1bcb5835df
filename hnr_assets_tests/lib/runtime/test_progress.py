"""Progress messages of long loops."""

from __future__ import annotations

import pytest

from hnr_assets.lib.runtime.progress import Progress, format_rate


def test_progress_messages() -> None:
    now = [0.0]
    messages: list[str] = []
    progress = Progress("mining", 100, messages.append, unit="queries", every_seconds=10, clock=lambda: now[0])
    for _ in range(50):
        now[0] += 0.1
        progress.update()
    assert messages == []
    now[0] += 10
    progress.update(10)
    assert messages == ["mining: 60.0% (60/100) 4.0 queries/s, ETA 10 s"]
    progress.update(40)
    assert messages[-1].startswith("mining: 100.0% (100/100)")


def test_progress_of_slow_steps_gives_time_per_item() -> None:
    """Generation and training run below one item per second: never `0.0 pairs/s`."""
    now = [0.0]
    messages: list[str] = []
    progress = Progress("llm_negatives[g]", 40, messages.append, unit="pairs", every_seconds=60, clock=lambda: now[0])
    now[0] = 280.0
    progress.update(10)
    assert messages == ["llm_negatives[g]: 25.0% (10/40) 28 s/pair, ETA 14 min 00 s"]
    now[0] = 400.0
    progress.update(10)  # 20 s/pair
    assert messages[-1] == "llm_negatives[g]: 50.0% (20/40) 20 s/pair, ETA 6 min 40 s"

    steps: list[str] = []
    training = Progress("training", 12, steps.append, unit="steps", every_seconds=30, clock=lambda: now[0])
    now[0] += 150.0
    training.update(1)
    assert steps == ["training: 8.3% (1/12) 2 min 30 s/step, ETA 27 min 30 s"]


@pytest.mark.parametrize(
    ("done", "seconds", "unit", "text"),
    [
        (513, 10.0, "queries", "51.3 queries/s"),
        (1, 1.0, "pairs", "1.0 pairs/s"),
        (2, 3.0, "pairs", "1.5 s/pair"),
        (1, 28.4, "queries", "28 s/query"),
        (3, 400.0, "passages", "2 min 13 s/passage"),
        (1, 7200.0, "steps", "2 h 00 min/step"),
        (0, 5.0, "pairs", "rate unknown"),
    ],
)
def test_format_rate(done: int, seconds: float, unit: str, text: str) -> None:
    assert format_rate(done, seconds, unit) == text
