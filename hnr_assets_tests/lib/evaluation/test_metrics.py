"""Metrics in BEIR's conventions (pytrec_eval)."""

from __future__ import annotations

import pytest

from hnr_assets.lib.evaluation.metrics import evaluate_run, top_k
from hnr_assets.lib.runtime.errors import ConfigError


def test_metrics_match_hand_computation() -> None:
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}, "q3": {"d9": 1}}
    run = {"q1": {"q1": 9.0, "d1": 1.0, "d3": 0.5}, "q2": {"d1": 0.3, "d3": 0.2}}
    means, per_query = evaluate_run(qrels, run)
    # q1: its own id is ignored, d1 first -> perfect; q2: d3 second; q3: no hits -> 0
    assert per_query["q1"]["ndcg@10"] == pytest.approx(1.0)
    assert per_query["q2"]["ndcg@10"] == pytest.approx(1 / 1.5849625, rel=1e-6)
    assert per_query["q2"]["mrr@10"] == pytest.approx(0.5)
    assert per_query["q3"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "map@100": 0.0}
    assert means["mrr@10"] == pytest.approx(1.5 / 3)
    assert run["q1"]["q1"] == 9.0  # input not mutated


def test_mrr_is_cut_at_k() -> None:
    qrels = {"q": {"rel": 1}}
    run = {"q": {**{f"d{i:02d}": 100.0 - i for i in range(10)}, "rel": 1.0}}
    means, _ = evaluate_run(qrels, run, ["mrr@10", "mrr@100"])
    assert means == {"mrr@10": 0.0, "mrr@100": pytest.approx(1 / 11)}


def test_top_k_ties_follow_trec_eval() -> None:
    assert list(top_k({"a": 1.0, "b": 1.0, "c": 2.0}, 2)) == ["c", "b"]


def test_unknown_metric() -> None:
    with pytest.raises(ConfigError, match="unknown metric 'p@5'"):
        evaluate_run({"q": {"d": 1}}, {}, ["p@5"])
