"""Training sets: one row per (query, positive, negatives) from the negative sets of a recipe.

A negative set is long (one row per negative, `lib.mining.negatives.NEGATIVES_SCHEMA`); a training set is wide,
the input of MultipleNegativesRankingLoss (`TRAINING_SET_SCHEMA`):

| column                      | meaning                                                             |
|-----------------------------|---------------------------------------------------------------------|
| query_id, positive_id       | the training pair                                                   |
| query, positive             | texts                                                               |
| negative_1 .. negative_n    | hard negatives of that pair from one source, in rank order          |
| source                      | `bm25`, `ce` or `llm-<generator>`                                   |
| distinct_negatives          | how many of the n are distinct (short rows repeat their negatives)  |
| split                       | `train` or `validation` (by query: no query is on both sides)       |

A recipe that combines sources concatenates their rows, as the study did: a pair covered by two sources
gives two rows, one with each source's negatives (the no-duplicates batch sampler keeps them apart).

References:
    Aarush Sinha, Don't Retrieve, Generate: Prompting LLMs for Synthetic Training Data in Dense
    Retrieval, arXiv 2504.21015 (2025).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from hnr_assets.lib.mining.ce_filter import false_negative_mask
from hnr_assets.lib.mining.negatives import hash_texts
from hnr_assets.lib.runtime.errors import ConfigError, DataValidationError

PAIR = ["query_id", "positive_id"]
SPLITS = ("train", "validation")

# Cross-encoder scores of an LLM negative set (one row per negative), the input of the filter.
CE_SCORES_SCHEMA = {
    "query_id": pl.String,
    "positive_id": pl.String,
    "negative_rank": pl.Int32,
    "negative_score": pl.Float64,
    "positive_score": pl.Float64,
}


def negative_columns(per_row: int) -> list[str]:
    """`negative_1 .. negative_<per_row>`."""
    return [f"negative_{i}" for i in range(1, per_row + 1)]


def training_set_schema(per_row: int) -> dict[str, pl.DataType]:
    """Columns and types of a training set with `per_row` negatives per row."""
    return {
        "query_id": pl.String,
        "positive_id": pl.String,
        "query": pl.String,
        "positive": pl.String,
        **dict.fromkeys(negative_columns(per_row), pl.String),
        "source": pl.String,
        "distinct_negatives": pl.Int32,
        "split": pl.String,
    }


def covered_pairs(negatives: pl.DataFrame, min_negatives: int) -> pl.DataFrame:
    """Pairs (`query_id`, `positive_id`) with at least `min_negatives` negatives in a negative set."""
    return negatives.group_by(PAIR).len().filter(pl.col("len") >= min_negatives).select(PAIR).sort(PAIR)


def common_pairs(sets: Mapping[str, pl.DataFrame], min_negatives: int) -> pl.DataFrame:
    """Pairs covered by every negative set (the same query set for every recipe).

    Args:
        sets: Negative sets by source name.
        min_negatives: Coverage threshold, as in `covered_pairs`.

    Returns:
        The intersection, sorted by pair.
    """
    if not sets:
        raise ConfigError("no negative sets to intersect")
    result: pl.DataFrame | None = None
    for frame in sets.values():
        pairs = covered_pairs(frame, min_negatives)
        result = pairs if result is None else result.join(pairs, on=PAIR, how="semi")
    assert result is not None
    return result.sort(PAIR)


def wide_rows(negatives: pl.DataFrame, per_row: int, min_negatives: int) -> tuple[pl.DataFrame, dict[str, int]]:
    """One row per pair with exactly `per_row` negatives, in rank order.

    A pair with more negatives keeps its best `per_row`; a pair with fewer than `per_row` but at least
    `min_negatives` is filled by repeating its own negatives in rank order (`[a, b]` -> `[a, b, a, b, a]`);
    a pair with fewer than `min_negatives` is dropped.

    Args:
        negatives: One negative set (long format).
        per_row: Negatives per row.
        min_negatives: Fewer than this many negatives and the pair is dropped.

    Returns:
        Rows (`query_id, positive_id, query, positive, negative_1.., source, distinct_negatives`) sorted by
        pair, and counts: `pairs`, `short_filled`, `dropped_short`.
    """
    if not 1 <= min_negatives <= per_row:
        raise ConfigError(f"min_negatives must be in 1..{per_row}, got {min_negatives}")
    neg_cols = negative_columns(per_row)
    grouped = (
        negatives.sort([*PAIR, "negative_rank"])
        .group_by(PAIR, maintain_order=True)
        .agg(
            pl.col("query").first(),
            pl.col("positive").first(),
            pl.col("source").first(),
            pl.col("negative").head(per_row).alias("_negs"),
        )
        .with_columns(pl.col("_negs").list.len().cast(pl.Int32).alias("_n"))
    )
    kept = grouped.filter(pl.col("_n") >= min_negatives)
    # Cycle each pair's own negatives: index i takes negative i mod n.
    gathered = kept.with_columns(
        pl.col("_negs").list.gather(pl.int_ranges(0, per_row) % pl.col("_n")).alias("_negs"),
    )
    rows = gathered.select(
        *PAIR,
        "query",
        "positive",
        *(pl.col("_negs").list.get(i).alias(name) for i, name in enumerate(neg_cols)),
        "source",
        pl.col("_negs").list.n_unique().cast(pl.Int32).alias("distinct_negatives"),
    ).sort(PAIR)
    stats = {
        "pairs": rows.height,
        "short_filled": kept.filter(pl.col("_n") < per_row).height,
        "dropped_short": grouped.height - kept.height,
    }
    return rows, stats


def apply_ce_filter(
    negatives: pl.DataFrame,
    scores: pl.DataFrame,
    *,
    relative_margin: float | None,
    absolute_margin: float | None,
) -> tuple[pl.DataFrame, int]:
    """Drop negatives the cross-encoder scores as likely positives (positive-aware rule).

    Args:
        negatives: One LLM negative set (long format).
        scores: Cross-encoder probabilities of those negatives and of each pair's positive
            (`CE_SCORES_SCHEMA`), one row per negative.
        relative_margin: See `ce_filter.false_negative_mask`.
        absolute_margin: See `ce_filter.false_negative_mask`.

    Returns:
        The kept negatives (same schema, ranks unchanged) and the number dropped.

    Raises:
        DataValidationError: A negative has no score (the scores are stale for this negative set).
    """
    keys = [*PAIR, "negative_rank"]
    joined = negatives.join(scores.select(*keys, "negative_score", "positive_score"), on=keys, how="left")
    missing = joined.filter(pl.col("negative_score").is_null() | pl.col("positive_score").is_null()).height
    if missing:
        raise DataValidationError(
            "cross-encoder scores",
            f"{missing} of {negatives.height} negatives have no score; rescore this negative set",
        )
    false_negative_mask([], 0.0, relative_margin=relative_margin, absolute_margin=absolute_margin)  # checks margins
    ordered = joined.sort(keys)
    # `ce_filter.false_negative_mask` per pair, vectorised: drop at or above the lowest limit of the rules,
    # with the pair's positive score as the first of its rows carries it.
    positive = pl.col("positive_score").first().over(PAIR)
    limits = []
    if relative_margin is not None:
        limits.append(positive * (1.0 - relative_margin))
    if absolute_margin is not None:
        limits.append(positive - absolute_margin)
    score = pl.col("negative_score")
    # Python's `score >= limit` is False when either is NaN (kept); polars orders NaN above everything.
    keep = score.is_nan() | positive.is_nan() | (score < pl.min_horizontal(limits)) if limits else None
    kept = ordered.filter(keep) if keep is not None else ordered
    return kept.select(negatives.columns), ordered.height - kept.height


def query_hash(query_id: str, seed: int) -> str:
    """The split key of a query: a hash of the seed and the id (stable across machines and recipes)."""
    return hashlib.blake2b(f"{seed}:{query_id}".encode(), digest_size=8).hexdigest()


def split_queries(query_ids: Iterable[str], fraction: float, seed: int) -> set[str]:
    """Choose the validation queries: the `round(fraction * n)` queries (at least one) of smallest hash.

    The choice depends only on the ids, the fraction and the seed, so recipes with the same query set
    get the same validation queries.

    Args:
        query_ids: The queries to split.
        fraction: Share of the queries held out, in (0, 1).
        seed: Split seed.

    Returns:
        Validation query ids.

    Raises:
        ConfigError: Fewer than two queries, or a fraction outside (0, 1).
    """
    unique = sorted(set(query_ids))
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {fraction}")
    if len(unique) < 2:
        raise ConfigError(f"cannot split {len(unique)} queries into training and validation")
    n_val = min(max(1, round(fraction * len(unique))), len(unique) - 1)
    ranked = sorted(unique, key=lambda q: query_hash(q, seed))
    return set(ranked[:n_val])


@dataclass
class AssembledSet:
    """A recipe's training set and where its rows came from."""

    rows: pl.DataFrame
    split: pl.DataFrame
    stats: dict[str, int | dict[str, int]] = field(default_factory=dict)


def assemble_training_set(
    sources: Sequence[str],
    negatives: Mapping[str, pl.DataFrame],
    *,
    per_row: int,
    min_negatives: int,
    keep_pairs: pl.DataFrame | None,
    query_universe: Sequence[str],
    validation_fraction: float,
    split_seed: int,
) -> AssembledSet:
    """Concatenate the rows of a recipe's sources and split them by query.

    The split is drawn over `query_universe` (every training query), not over the queries the recipe
    covers: the validation queries are then the same for every recipe and do not shrink when the
    negative sources cover few pairs (validation ranks corpus passages and needs no negatives).

    Args:
        sources: The recipe's negative-set names, in order.
        negatives: Negative set by name (already filtered for `-filtered` recipes).
        per_row: Negatives per row.
        min_negatives: See `wide_rows`.
        keep_pairs: Only these pairs (`query_id`, `positive_id`), e.g. `common_pairs` of the profile;
            None keeps every pair a source covers.
        query_universe: Every query the split is drawn over (the training pairs' queries).
        validation_fraction: Share of the queries held out.
        split_seed: Split seed.

    Returns:
        Rows with `split`, the split of every query of the universe, and counts per source.

    Raises:
        DataValidationError: A negative set has rows for a query outside the universe.
    """
    parts = []
    per_source: dict[str, dict[str, int]] = {}
    for source in sources:
        if source not in negatives:
            raise ConfigError(f"negative set {source!r} was not loaded")
        frame = negatives[source]
        if keep_pairs is not None:
            frame = frame.join(keep_pairs.select(PAIR), on=PAIR, how="semi")
        rows, counts = wide_rows(frame, per_row, min_negatives)
        per_source[source] = counts
        parts.append(rows)
    rows = pl.concat(parts) if parts else pl.DataFrame(schema=training_set_schema(per_row)).drop("split")
    universe = sorted(set(query_universe))
    validation = split_queries(universe, validation_fraction, split_seed)
    split = (
        pl.DataFrame({"query_id": universe}, schema={"query_id": pl.String})
        .with_columns(
            pl.when(pl.col("query_id").is_in(sorted(validation)))
            .then(pl.lit("validation"))
            .otherwise(pl.lit("train"))
            .alias("split")
        )
        .sort("query_id")
    )
    rows = rows.join(split, on="query_id", how="left").cast(training_set_schema(per_row))
    strangers = rows.filter(pl.col("split").is_null())["query_id"].unique().sort()
    if strangers.len():
        raise DataValidationError(
            "negative sets",
            f"{', '.join(sources)} have rows for {strangers.len()} queries that are not training queries, "
            f"e.g. {', '.join(strangers.head(3).to_list())}",
        )
    stats: dict[str, int | dict[str, int]] = {
        "rows": rows.height,
        "pairs": rows.select(PAIR).unique().height,
        "queries": rows["query_id"].n_unique(),
        "train_rows": rows.filter(pl.col("split") == "train").height,
        "validation_rows": rows.filter(pl.col("split") == "validation").height,
        "validation_queries": len(validation),
        "short_rows_filled": sum(c["short_filled"] for c in per_source.values()),
        "pairs_dropped_short": sum(c["dropped_short"] for c in per_source.values()),
        "per_source": {s: c["pairs"] for s, c in per_source.items()},
    }
    return AssembledSet(rows=rows, split=split, stats=stats)


def validate_training_set(rows: pl.DataFrame, per_row: int) -> dict[str, list[str]]:
    """Check a stored training set.

    Returns:
        Problems by check name (empty lists when sound): `schema` (columns, types, no null or empty
        text, known split values), `not_positive` (no negative equals its positive by normalised text),
        `split` (no query on both sides of the split).
    """
    problems: dict[str, list[str]] = {"schema": [], "not_positive": [], "split": []}
    expected = training_set_schema(per_row)
    if dict(rows.schema) != expected:
        problems["schema"].append(f"schema {dict(rows.schema)} differs from {expected}")
        return problems
    if rows.height == 0:
        problems["schema"].append("no rows")
        return problems
    for col in ["query_id", "positive_id", "query", "positive", *negative_columns(per_row), "source"]:
        bad = rows.filter(pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")).height
        if bad:
            problems["schema"].append(f"{bad} rows have a null or empty {col}")
    unknown = rows.filter(~pl.col("split").is_in(list(SPLITS))).height
    if unknown:
        problems["schema"].append(f"{unknown} rows have a split other than {SPLITS}")

    positive = hash_texts(rows["positive"])
    for col in negative_columns(per_row):
        same = (hash_texts(rows[col]) == positive).sum()
        if same:
            problems["not_positive"].append(f"{same} rows have {col} equal to their positive (normalised text)")

    both = rows.group_by("query_id").agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1)
    if both.height:
        sample = ", ".join(both["query_id"].head(5).to_list())
        problems["split"].append(f"{both.height} queries are on both sides of the split, e.g. {sample}")
    return problems
