"""Training-set assembly: wide rows, common pairs, cross-encoder filter, split by query."""

from __future__ import annotations

import polars as pl
import pytest

from hnr_assets.lib.mining.ce_filter import false_negative_mask
from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA
from hnr_assets.lib.runtime.errors import ConfigError, DataValidationError
from hnr_assets.lib.training.training_sets import (
    CE_SCORES_SCHEMA,
    apply_ce_filter,
    assemble_training_set,
    common_pairs,
    split_queries,
    training_set_schema,
    validate_training_set,
    wide_rows,
)

UNIVERSE = [f"q{i}" for i in range(25)]


def negset(source: str, counts: dict[str, int], *, text: str = "neg") -> pl.DataFrame:
    """A negative set with `counts[qid]` negatives for pair (qid, p-qid)."""
    rows = [
        {
            "query_id": q,
            "positive_id": f"p-{q}",
            "query": f"query {q}",
            "positive": f"positive of {q}",
            "negative_rank": r,
            "negative_id": None,
            "negative": f"{source} {text} {r} for {q}",
            "score": None,
            "source": source,
        }
        for q, n in counts.items()
        for r in range(n, 0, -1)  # written in reverse rank order: assembly must sort
    ]
    return pl.DataFrame(rows, schema=NEGATIVES_SCHEMA)


def test_wide_rows_keep_rank_order_fill_short_and_drop_empty() -> None:
    frame = negset("bm25", {"q1": 5, "q2": 2, "q3": 7})
    rows, stats = wide_rows(frame, per_row=5, min_negatives=1)
    assert rows["query_id"].to_list() == ["q1", "q2", "q3"]
    q2 = rows.row(1, named=True)
    assert [q2[f"negative_{i}"] for i in range(1, 6)] == [
        "bm25 neg 1 for q2",
        "bm25 neg 2 for q2",
        "bm25 neg 1 for q2",
        "bm25 neg 2 for q2",
        "bm25 neg 1 for q2",
    ]
    assert rows.row(2, named=True)["negative_5"] == "bm25 neg 5 for q3"  # best 5 of 7
    assert rows["distinct_negatives"].to_list() == [5, 2, 5]
    assert stats == {"pairs": 3, "short_filled": 1, "dropped_short": 0}

    strict, stats = wide_rows(frame, per_row=5, min_negatives=5)
    assert strict["query_id"].to_list() == ["q1", "q3"]
    assert stats["dropped_short"] == 1
    with pytest.raises(ConfigError, match="min_negatives must be in 1..5"):
        wide_rows(frame, per_row=5, min_negatives=6)


def test_common_pairs_is_the_intersection_of_covered_pairs() -> None:
    sets = {
        "bm25": negset("bm25", {"q1": 5, "q2": 5, "q3": 5}),
        "llm-a": negset("llm-a", {"q1": 5, "q2": 1}),
    }
    assert common_pairs(sets, 1)["query_id"].to_list() == ["q1", "q2"]
    assert common_pairs(sets, 2)["query_id"].to_list() == ["q1"]


def test_split_is_by_query_deterministic_and_never_empty() -> None:
    ids = [f"q{i}" for i in range(100)]
    val = split_queries(ids, 0.1, seed=0)
    assert len(val) == 10
    assert val == split_queries(list(reversed(ids)), 0.1, seed=0)
    assert val != split_queries(ids, 0.1, seed=1)
    assert len(split_queries(["a", "b", "c"], 0.1, seed=0)) == 1
    assert len(split_queries(["a", "b"], 0.9, seed=0)) == 1  # one query always left to train on
    with pytest.raises(ConfigError, match="cannot split 1 queries"):
        split_queries(["a"], 0.1, seed=0)


def test_combined_recipe_concatenates_rows_on_the_common_pairs() -> None:
    bm25 = negset("bm25", {f"q{i}": 5 for i in range(20)})
    llm = negset("llm-a", {f"q{i}": 5 for i in range(15)})
    keep = common_pairs({"bm25": bm25, "llm-a": llm}, 1)
    both = assemble_training_set(
        ["llm-a", "bm25"],
        {"llm-a": llm, "bm25": bm25},
        per_row=5,
        min_negatives=1,
        keep_pairs=keep,
        query_universe=UNIVERSE,
        validation_fraction=0.2,
        split_seed=0,
    )
    alone = assemble_training_set(
        ["bm25"],
        {"bm25": bm25},
        per_row=5,
        min_negatives=1,
        keep_pairs=keep,
        query_universe=UNIVERSE,
        validation_fraction=0.2,
        split_seed=0,
    )
    assert both.stats["rows"] == 30 and both.stats["pairs"] == 15
    assert both.stats["per_source"] == {"llm-a": 15, "bm25": 15}
    assert both.rows["source"].to_list()[:15] == ["llm-a"] * 15
    assert alone.stats["rows"] == 15  # same query set for every recipe
    assert both.split.equals(alone.split)  # and the same validation queries
    assert both.stats["validation_queries"] == 5  # 20% of the 25 training queries, covered or not
    assert both.split.height == 25
    assert dict(both.rows.schema) == training_set_schema(5)
    assert validate_training_set(both.rows, 5) == {"schema": [], "not_positive": [], "split": []}
    sides = both.rows.group_by("query_id").agg(pl.col("split").n_unique())
    assert sides["split"].max() == 1


def test_validation_catches_positive_as_negative_and_split_leaks() -> None:
    built = assemble_training_set(
        ["bm25"],
        {"bm25": negset("bm25", {f"q{i}": 5 for i in range(10)})},
        per_row=5,
        min_negatives=1,
        keep_pairs=None,
        query_universe=UNIVERSE,
        validation_fraction=0.2,
        split_seed=0,
    )
    rows = built.rows.with_columns(
        pl.when(pl.col("query_id") == "q3")
        .then(pl.col("positive").str.to_uppercase() + "!")
        .otherwise(pl.col("negative_2"))
        .alias("negative_2"),
        pl.when(pl.col("query_id") == "q4").then(pl.lit("")).otherwise(pl.col("negative_1")).alias("negative_1"),
    )
    leaked = pl.concat(
        [rows, rows.filter(pl.col("query_id") == "q5").with_columns(pl.lit("validation").alias("split"))]
    )
    leaked = pl.concat([leaked, rows.filter(pl.col("query_id") == "q5").with_columns(pl.lit("train").alias("split"))])
    problems = validate_training_set(leaked, 5)
    assert problems["not_positive"] == ["1 rows have negative_2 equal to their positive (normalised text)"]
    assert problems["schema"] == ["1 rows have a null or empty negative_1"]
    assert problems["split"] == ["1 queries are on both sides of the split, e.g. q5"]
    assert validate_training_set(rows.drop("split"), 5)["schema"][0].startswith("schema ")


def test_ce_filter_applies_the_shared_positive_aware_rule() -> None:
    llm = negset("llm-a", {"q1": 5, "q2": 3})
    negative_scores = {("q1", r): s for r, s in zip(range(1, 6), [0.1, 0.95, 0.5, 0.86, 0.84], strict=True)}
    negative_scores |= {("q2", r): s for r, s in zip(range(1, 4), [0.99, 0.2, 0.3], strict=True)}
    positive = {"q1": 0.9, "q2": 0.5}
    scores = pl.DataFrame(
        [
            {
                "query_id": q,
                "positive_id": f"p-{q}",
                "negative_rank": r,
                "negative_score": s,
                "positive_score": positive[q],
            }
            for (q, r), s in negative_scores.items()
        ],
        schema=CE_SCORES_SCHEMA,
    )
    kept, dropped = apply_ce_filter(llm, scores, relative_margin=0.05, absolute_margin=None)
    expected_drop = false_negative_mask([0.1, 0.95, 0.5, 0.86, 0.84], 0.9) + false_negative_mask([0.99, 0.2, 0.3], 0.5)
    assert dropped == sum(expected_drop) == 3  # 0.95 and 0.86 (>= 0.855) for q1; 0.99 for q2
    kept_ranks = kept.sort("query_id", "negative_rank").select("query_id", "negative_rank").rows()
    assert kept_ranks == [("q1", 1), ("q1", 3), ("q1", 5), ("q2", 2), ("q2", 3)]
    assert kept.schema == llm.schema

    missing = scores.filter(~((pl.col("query_id") == "q2") & (pl.col("negative_rank") > 1)))
    with pytest.raises(DataValidationError, match="2 of 8 negatives have no score"):
        apply_ce_filter(llm, missing, relative_margin=0.05, absolute_margin=None)


def test_rows_for_unknown_queries_are_refused() -> None:
    with pytest.raises(
        DataValidationError, match="bm25 have rows for 1 queries that are not training queries, e.g. q99"
    ):
        assemble_training_set(
            ["bm25"],
            {"bm25": negset("bm25", {"q1": 5, "q99": 5})},
            per_row=5,
            min_negatives=1,
            keep_pairs=None,
            query_universe=["q1", "q2", "q3"],
            validation_fraction=0.2,
            split_seed=0,
        )


def test_ce_filter_equals_the_rule_applied_pair_by_pair_nan_included() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    pair = rng.integers(0, 300, 3000)
    negs = pl.DataFrame(
        {"query_id": [f"q{p}" for p in pair], "positive_id": "p", "negative_rank": np.arange(3000, dtype=np.int32)}
    )
    positive = rng.random(300)
    positive[5] = np.nan
    score = rng.random(3000)
    score[::97] = np.nan
    score[::89] = positive[pair[::89]] * 0.95  # exactly on the relative limit: dropped
    scores = negs.with_columns(pl.Series("negative_score", score), pl.Series("positive_score", positive[pair]))
    for rel, ab in ((0.05, None), (None, 0.1), (0.05, 0.02), (None, None)):
        kept, dropped = apply_ce_filter(negs, scores.cast(CE_SCORES_SCHEMA), relative_margin=rel, absolute_margin=ab)
        ordered = scores.sort("query_id", "positive_id", "negative_rank")
        drop: list[bool] = []
        for group in ordered.partition_by(["query_id", "positive_id"], maintain_order=True):
            drop += false_negative_mask(
                group["negative_score"].to_list(), group["positive_score"][0], relative_margin=rel, absolute_margin=ab
            )
        assert kept.equals(ordered.filter(~pl.Series(drop)).select(negs.columns))
        assert dropped == sum(drop)
    with pytest.raises(ConfigError):
        apply_ce_filter(negs, scores.cast(CE_SCORES_SCHEMA), relative_margin=1.5, absolute_margin=None)
