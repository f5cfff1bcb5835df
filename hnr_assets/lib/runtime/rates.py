"""Rate probes: a heavy step's own speed against a bare baseline, measured on one sample in one process.

A probe runs after an asset's main work, on a small sample of that asset's own data: hnr's code path and
the baseline (what a researcher would write with the library alone: bare sentence-transformers, the
`transformers` generation backend, BEIR's exact search) one after the other, so machine load affects both
alike. The result is a `RateProbe`; `probe_metadata` flattens it into the keys that materialization
metadata and MLflow take (`rate/<stage>/hnr`, ...). A probe whose baseline cannot run (a package that is
not installed, a model served over HTTP) records why in `skipped`, never a made-up number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hnr_assets.lib.runtime.report import md_table

PREFIX = "rate/"
FIELDS = ("hnr", "baseline", "ratio", "unit", "hnr_name", "baseline_name", "sample", "skipped")
T = TypeVar("T")


@dataclass(frozen=True)
class RateProbe:
    """One side-by-side rate measurement.

    Attributes:
        stage: What was measured, e.g. `encoding`, `search`, `ce_scoring`, `generation`, `training`.
        unit: Unit of both rates, e.g. `passages/s`.
        hnr_name: hnr's code path, in words (with its precision or runtime).
        hnr_rate: hnr's rate, or None when it was not measured (see `skipped`).
        baseline_name: The baseline, in words.
        baseline_rate: The baseline's rate, or None when it could not run (see `skipped`).
        sample: Items in the sample both sides processed.
        skipped: Why a rate is missing ("" when both were measured).
    """

    stage: str
    unit: str
    hnr_name: str
    hnr_rate: float | None
    baseline_name: str
    baseline_rate: float | None
    sample: int
    skipped: str = ""

    def __post_init__(self) -> None:
        for name in ("hnr_rate", "baseline_rate"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"rate probe {self.stage!r}: {name} {value!r} is not a finite rate >= 0")
        if (self.hnr_rate is None or self.baseline_rate is None) and not self.skipped:
            raise ValueError(f"rate probe {self.stage!r}: a missing rate needs its reason (`skipped`)")

    @property
    def ratio(self) -> float | None:
        """hnr / baseline (> 1: hnr is faster); None when either is missing or the baseline is 0."""
        if self.hnr_rate is None or not self.baseline_rate:
            return None
        return self.hnr_rate / self.baseline_rate


def probe_metadata(probe: RateProbe) -> dict[str, float | int | str]:
    """The probe as flat keys `rate/<stage>/<field>` (numbers and strings only; missing rates left out).

    Fields: `hnr`, `baseline`, `ratio` (floats, when measured), `unit`, `hnr_name`, `baseline_name`
    (strings), `sample` (int), `skipped` (the reason, when a rate is missing).
    """
    base = f"{PREFIX}{probe.stage}/"
    out: dict[str, float | int | str] = {
        base + "unit": probe.unit,
        base + "hnr_name": probe.hnr_name,
        base + "baseline_name": probe.baseline_name,
        base + "sample": int(probe.sample),
    }
    for name, value in (("hnr", probe.hnr_rate), ("baseline", probe.baseline_rate), ("ratio", probe.ratio)):
        if value is not None:
            out[base + name] = round(float(value), 4)
    if probe.skipped:
        out[base + "skipped"] = probe.skipped
    return out


def split_for_mlflow(flat: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """`probe_metadata` output as MLflow metrics (the floats) and parameters (the rest)."""
    metrics = {k: float(v) for k, v in flat.items() if isinstance(v, float)}
    params = {k: str(v) for k, v in flat.items() if not isinstance(v, float)}
    return metrics, params


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()` and the wall seconds it took."""
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def per_second(count: float, seconds: float) -> float | None:
    """`count / seconds`, or None when no time was measured."""
    return count / seconds if seconds > 0 else None


def from_seconds(
    stage: str, unit: str, sample: int, hnr_name: str, hnr_seconds: float, baseline_name: str, baseline_seconds: float
) -> RateProbe:
    """The probe of `sample` items processed once by hnr and once by the baseline in the seconds given."""
    return RateProbe(
        stage=stage,
        unit=unit,
        hnr_name=hnr_name,
        hnr_rate=per_second(sample, hnr_seconds),
        baseline_name=baseline_name,
        baseline_rate=per_second(sample, baseline_seconds),
        sample=sample,
        skipped="" if hnr_seconds > 0 and baseline_seconds > 0 else "no time measured",
    )


def read_probes(metadata: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The probes recorded in a materialization's metadata: `{stage: {field: value}}`.

    Values may be plain or Dagster metadata values (anything with a `.value`).
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in metadata.items():
        if not key.startswith(PREFIX):
            continue
        stage, _, name = key[len(PREFIX) :].rpartition("/")
        if stage and name in FIELDS:
            out.setdefault(stage, {})[name] = getattr(value, "value", value)
    return out


def probe_table(rows: Iterable[tuple[str, str | None, Mapping[str, Any]]]) -> str:
    """A Markdown table of probes: one row per `(stage, partition, fields)`, fields as `read_probes` gives."""

    def rate(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, int | float) else "-"

    lines = []
    for stage, partition, f in rows:
        ratio = f.get("ratio")
        lines.append(
            (
                stage,
                partition or "-",
                f"{rate(f.get('hnr'))} {f.get('unit', '')}".strip(),
                f.get("baseline_name", ""),
                rate(f.get("baseline")),
                f"{ratio:.2f}x" if isinstance(ratio, int | float) else (f.get("skipped") or "-"),
            )
        )
    return md_table(lines, ["stage", "partition", "hnr rate", "baseline", "baseline rate", "ratio"], max_chars=90)
