"""Paired significance tests over queries, and multiple-comparison corrections.

Two systems are compared on the same judged queries of one dataset by the per-query difference of a
metric. Two tests are offered: the paired t-test (Student), and the paired bootstrap test (resample
queries with replacement; the p-value is the share of resampled mean differences, shifted to a null
mean of 0, at least as extreme as the observed one). Comparing many systems against one baseline on
one dataset is a family of tests; `holm` controls its family-wise error rate.

References:
    Smucker, Allan and Carterette, A Comparison of Statistical Significance Tests for Information
    Retrieval Evaluation, CIKM 2007; Sakai, Evaluating Evaluation Metrics based on the Bootstrap,
    SIGIR 2006; Holm, A Simple Sequentially Rejective Multiple Test Procedure, Scand. J. Statist. 1979.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

TESTS = ("t-test", "bootstrap")
CORRECTIONS = ("holm", "bonferroni", "none")


@dataclass(frozen=True)
class PairedComparison:
    """One system against a baseline on one dataset.

    Attributes:
        n: Queries compared (judged by both).
        mean_system: Mean metric of the system over those queries.
        mean_baseline: Mean metric of the baseline over those queries.
        delta: `mean_system - mean_baseline`.
        p_t: Two-sided p-value of the paired t-test (1.0 when every difference is 0; nan if n < 2).
        p_bootstrap: Two-sided p-value of the paired bootstrap test.
    """

    n: int
    mean_system: float
    mean_baseline: float
    delta: float
    p_t: float
    p_bootstrap: float


def paired_t_test(diff: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test on per-query differences."""
    from scipy import stats

    diff = np.asarray(diff, dtype=np.float64)
    if diff.size < 2:
        return math.nan
    if np.allclose(diff, diff[0]):
        return 1.0 if abs(diff[0]) < 1e-12 else 0.0
    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def paired_bootstrap(diff: np.ndarray, samples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of the paired bootstrap test on per-query differences.

    The differences are shifted to mean 0 (the null hypothesis) and resampled with replacement;
    p = (1 + #{|resampled mean| >= |observed mean|}) / (1 + samples).
    """
    diff = np.asarray(diff, dtype=np.float64)
    if diff.size < 2:
        return math.nan
    observed = abs(diff.mean())
    if np.allclose(diff, diff[0]):
        return 1.0 if observed < 1e-12 else 1.0 / (1 + samples)
    rng = np.random.default_rng(seed)
    centred = diff - diff.mean()
    hits = 0
    chunk = max(1, 2_000_000 // diff.size)
    done = 0
    while done < samples:
        b = min(chunk, samples - done)
        idx = rng.integers(0, diff.size, size=(b, diff.size))
        hits += int((np.abs(centred[idx].mean(axis=1)) >= observed - 1e-12).sum())
        done += b
    return (1 + hits) / (1 + samples)


def bootstrap_ci(
    values: np.ndarray, samples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a mean over queries.

    Queries are resampled with replacement `samples` times; the interval is the central `confidence`
    share of the resampled means.

    Args:
        values: One value per query (e.g. its nDCG@10).
        samples: Resamples.
        seed: Seed of the resampling.
        confidence: Coverage of the interval, e.g. 0.95.

    Returns:
        (low, high); (nan, nan) for fewer than two values.

    References:
        Efron and Tibshirani, An Introduction to the Bootstrap, 1993 (percentile interval); Sakai,
        Evaluating Evaluation Metrics based on the Bootstrap, SIGIR 2006.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return math.nan, math.nan
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    means = np.empty(samples, dtype=np.float64)
    chunk = max(1, 2_000_000 // values.size)
    done = 0
    while done < samples:
        b = min(chunk, samples - done)
        idx = rng.integers(0, values.size, size=(b, values.size))
        means[done : done + b] = values[idx].mean(axis=1)
        done += b
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def compare(system: pl.DataFrame, baseline: pl.DataFrame, metric: str, samples: int, seed: int) -> PairedComparison:
    """Compare two per-query frames (`query_id`, `metric`) on the queries both have."""
    joined = system.select("query_id", pl.col(metric).alias("s")).join(
        baseline.select("query_id", pl.col(metric).alias("b")), on="query_id", how="inner"
    )
    s = joined["s"].to_numpy().astype(np.float64)
    b = joined["b"].to_numpy().astype(np.float64)
    diff = s - b
    n = int(diff.size)
    return PairedComparison(
        n=n,
        mean_system=float(s.mean()) if n else math.nan,
        mean_baseline=float(b.mean()) if n else math.nan,
        delta=float(diff.mean()) if n else math.nan,
        p_t=paired_t_test(diff),
        p_bootstrap=paired_bootstrap(diff, samples, seed),
    )


def adjust(p_values: Sequence[float], method: str) -> list[float]:
    """Adjusted p-values for one family of tests (nan values are left out of the family).

    Args:
        p_values: Raw p-values.
        method: `holm` (step-down, family-wise error), `bonferroni`, or `none`.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}: use one of {', '.join(CORRECTIONS)}")
    p = [float(v) for v in p_values]
    valid = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(valid)
    out = list(p)
    if method == "none" or m == 0:
        return out
    if method == "bonferroni":
        for i in valid:
            out[i] = min(1.0, p[i] * m)
        return out
    running = 0.0
    for rank, i in enumerate(sorted(valid, key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
