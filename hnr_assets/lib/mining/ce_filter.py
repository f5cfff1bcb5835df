"""Positive-aware false-negative filtering with cross-encoder scores.

A candidate negative that the cross-encoder scores almost as high as (or higher than) the pair's own
positive is likely an unlabelled positive. Two rules, usable together:

- relative: drop when `score >= positive_score * (1 - relative_margin)`; with `relative_margin=0.05`
  this is NV-Retriever's TopK-PercPos at 95% (sentence-transformers `mine_hard_negatives(relative_margin=)`);
- absolute: drop when `score >= positive_score - absolute_margin` (TopK-MarginPos).

Scores must be probabilities in [0, 1] (the cross-encoder's sigmoid), so that the relative rule is
meaningful; raw logits can be negative.

References:
    Moreira et al., NV-Retriever: Improving text embedding models with effective hard-negative mining,
    arXiv 2407.15831 (2024).
"""

from __future__ import annotations

from collections.abc import Sequence

from hnr_assets.lib.runtime.errors import ConfigError


def false_negative_mask(
    candidate_scores: Sequence[float],
    positive_score: float,
    *,
    relative_margin: float | None = 0.05,
    absolute_margin: float | None = None,
) -> list[bool]:
    """Which candidates to drop as likely positives.

    Args:
        candidate_scores: Cross-encoder probabilities of the candidates.
        positive_score: Cross-encoder probability of the pair's positive.
        relative_margin: Drop at or above `positive_score * (1 - relative_margin)`; None: rule off.
        absolute_margin: Drop at or above `positive_score - absolute_margin`; None: rule off.

    Returns:
        One boolean per candidate, True = drop.
    """
    if relative_margin is not None and not 0.0 <= relative_margin < 1.0:
        raise ConfigError(f"relative_margin must be in [0, 1), got {relative_margin}")
    if absolute_margin is not None and absolute_margin < 0.0:
        raise ConfigError(f"absolute_margin must be >= 0, got {absolute_margin}")
    limits = []
    if relative_margin is not None:
        limits.append(positive_score * (1.0 - relative_margin))
    if absolute_margin is not None:
        limits.append(positive_score - absolute_margin)
    if not limits:
        return [False] * len(candidate_scores)
    limit = min(limits)
    return [score >= limit for score in candidate_scores]
