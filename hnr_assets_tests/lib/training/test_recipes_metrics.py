"""Recipe grid, metrics in BEIR's conventions, progress messages."""

from __future__ import annotations

import pytest

from hnr_assets.lib.evaluation.metrics import evaluate_run, top_k
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.progress import Progress, format_rate
from hnr_assets.lib.training.recipes import derive_recipes


def test_study_grid_for_four_generators() -> None:
    keys = [r.key for r in derive_recipes(["qwen3-4b", "qwen3-30b-a3b", "llama3.1-8b", "phi4-14b"])]
    assert keys[:5] == ["bm25", "ce", "llm-qwen3-4b", "llm-qwen3-4b+bm25", "llm-qwen3-4b+ce"]
    assert {"all-llms", "all-llms+bm25", "all-llms+ce", "all-llms-filtered", "llm-phi4-14b-filtered"} <= set(keys)
    assert len(keys) == len(set(keys)) == 2 + 4 * 3 + 3 + 4 + 1
    assert all(not any(c in k for c in "|,[]/") for k in keys)


def test_single_generator_has_no_all_llms() -> None:
    recipes = {r.key: r for r in derive_recipes(["g"])}
    assert "all-llms" not in recipes
    assert recipes["llm-g+ce"].sources == ("llm-g", "ce")
    assert recipes["llm-g-filtered"].ce_filtered and not recipes["llm-g-filtered"].in_study


def test_bad_generator_key() -> None:
    with pytest.raises(ConfigError, match="invalid generator key"):
        derive_recipes(["a|b"])


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
