"""Score folders (layout, scoring, validation) and paired significance tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hnr_assets.lib.evaluation import significance
from hnr_assets.lib.evaluation.metrics import evaluate_run
from hnr_assets.lib.evaluation.scores import (
    METRICS,
    metrics_out_of_range,
    read_metrics,
    read_per_query,
    read_run,
    run_to_dict,
    score_run,
    validate_run,
    write_scores,
)
from hnr_assets.lib.runtime.errors import DataValidationError

QRELS = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}, "q3": {"d9": 1}}


def _run(rows: list[tuple[str, str, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={"query_id": pl.String, "doc_id": pl.String, "score": pl.Float32, "rank": pl.Int32}, orient="row"
    )


GOOD = _run([("q1", "d1", 0.9, 1), ("q1", "d3", 0.5, 2), ("q2", "d1", 0.3, 1), ("q2", "d3", 0.2, 2)])


def test_score_run_is_evaluate_run_per_query_and_mean() -> None:
    per_query, means = score_run(GOOD, QRELS)
    ref_means, ref_pq = evaluate_run(QRELS, run_to_dict(GOOD))
    assert means == ref_means
    assert per_query.columns == ["query_id", *METRICS]
    assert per_query["query_id"].to_list() == ["q1", "q2", "q3"]  # q3 has no hit and counts as 0
    for row in per_query.iter_rows(named=True):
        assert {m: row[m] for m in METRICS} == pytest.approx(ref_pq[row["query_id"]])
    assert per_query.filter(pl.col("query_id") == "q3")["ndcg@10"][0] == 0.0


def test_write_and_read_back(tmp_path: Path) -> None:
    per_query, means = score_run(GOOD, QRELS)
    folder = write_scores(tmp_path / "scores" / "s" / "d", GOOD, per_query, {**means, "queries": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "per_query.parquet", "run.parquet"]
    assert read_run(folder / "run.parquet").equals(GOOD)
    assert read_per_query(folder).equals(per_query)
    assert read_metrics(folder)["queries"] == 3


def test_read_metrics_rejects_incomplete_files(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"ndcg@10": 0.5, "recall@100": "x"}))
    with pytest.raises(DataValidationError, match=r"metrics\.json: no numeric value for recall@100, mrr@10, map@100"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(DataValidationError, match="invalid JSON"):
        read_metrics(tmp_path)
    pl.DataFrame({"query_id": ["q"]}).write_parquet(tmp_path / "per_query.parquet")
    with pytest.raises(DataValidationError, match="missing columns ndcg@10"):
        read_per_query(tmp_path)


def test_validate_run_finds_each_contract_problem() -> None:
    assert validate_run(GOOD, top_k=2, judged=set(QRELS)) == []
    assert "1 queries have more than 1 hits" in validate_run(GOOD.filter(pl.col("query_id") == "q1"), top_k=1)[0]
    dup = _run([("q1", "d1", 0.9, 1), ("q1", "d1", 0.5, 2)])
    assert any("list a document twice" in p for p in validate_run(dup, 10))
    gap = _run([("q1", "d1", 0.9, 1), ("q1", "d2", 0.5, 3)])
    assert any("ranks that are not 1..n" in p for p in validate_run(gap, 10))
    rising = _run([("q1", "d1", 0.1, 1), ("q1", "d2", 0.5, 2)])
    assert any("scores that rise with rank" in p for p in validate_run(rising, 10))
    assert any("not judged" in p for p in validate_run(_run([("qx", "d1", 1.0, 1)]), 10, judged={"q1"}))
    nan = _run([("q1", "d1", float("nan"), 1)])
    assert any("non-finite" in p for p in validate_run(nan, 10))


def test_metrics_out_of_range() -> None:
    per_query, means = score_run(GOOD, QRELS)
    assert metrics_out_of_range(per_query, means) == []
    bad = per_query.with_columns(
        pl.when(pl.col("query_id") == "q2").then(1.5).otherwise(pl.col("mrr@10")).alias("mrr@10")
    )
    problems = metrics_out_of_range(bad, {**means, "ndcg@10": float("nan")})
    assert problems == [
        "mean ndcg@10 = nan is not in [0, 1]",
        "1 per-query mrr@10 values outside [0, 1] (e.g. query 'q2')",
    ]


# ------------------------------------------------------------------------------------------ significance


def test_t_test_matches_scipy_paired_t_test() -> None:
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=50), rng.uniform(size=50)
    assert significance.paired_t_test(a - b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert significance.paired_t_test(np.zeros(10)) == 1.0
    assert math.isnan(significance.paired_t_test(np.array([0.1])))


def test_bootstrap_separates_a_real_difference_from_noise() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.2, size=200)
    shifted = noise + 0.1
    assert significance.paired_bootstrap(shifted, 2000, seed=0) < 0.01
    assert significance.paired_bootstrap(noise - noise.mean(), 2000, seed=0) > 0.5
    assert significance.paired_bootstrap(shifted, 2000, seed=0) == significance.paired_bootstrap(shifted, 2000, seed=0)


def test_compare_joins_on_query_id() -> None:
    sys_ = pl.DataFrame({"query_id": ["a", "b", "c"], "ndcg@10": [1.0, 0.5, 0.0]})
    base = pl.DataFrame({"query_id": ["c", "a"], "ndcg@10": [0.0, 0.5]})
    cmp = significance.compare(sys_, base, "ndcg@10", 200, 0)
    assert cmp.n == 2 and cmp.delta == pytest.approx(0.25)
    assert cmp.mean_system == pytest.approx(0.5) and cmp.mean_baseline == pytest.approx(0.25)


def test_holm_and_bonferroni_by_hand() -> None:
    p = [0.01, 0.04, 0.03, float("nan")]
    assert significance.adjust(p, "bonferroni")[:3] == pytest.approx([0.03, 0.12, 0.09])
    # Holm: sorted 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    holm = significance.adjust(p, "holm")
    assert holm[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(holm[3])
    assert significance.adjust(p, "none")[:3] == p[:3]
    with pytest.raises(ValueError, match="unknown correction"):
        significance.adjust(p, "fdr")
