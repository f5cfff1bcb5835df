"""Fine-tuning with a tiny random BERT: no-duplicate batches, validation, early stopping, best checkpoint."""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.tiny_models import tiny_vocab
from hnr_assets.lib.training.encoder_models import build_base_encoder
from hnr_assets.lib.training.encoder_training import (
    PRIMARY_KEY,
    TrainerOptions,
    ValidationData,
    build_trainer,
    make_evaluator,
    metric_name,
    planned_steps,
    train_encoder,
    validation_data,
)
from hnr_assets_tests.training_fixtures import single_torch_thread

one_thread = pytest.fixture(scope="module", autouse=True)(single_torch_thread)

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "omega", "rho"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "model"
    build_base_encoder("tiny-random", folder, cache_dir=folder.parent / "cache", max_seq_length=32, seed=0)
    return folder


def rows(n_pairs: int, copies: int = 1, seed: int = 0) -> pl.DataFrame:
    """Training rows; with copies > 1 every query appears in several rows (a combined recipe)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_pairs):
        query = f"{' '.join(rng.sample(WORDS, 3))} {i}"
        for c in range(copies):
            out.append(
                {
                    "query": query,
                    "positive": f"{query} is answered here",
                    **{f"negative_{j}": f"{' '.join(rng.sample(WORDS, 4))} {i} {c} {j}" for j in range(1, 6)},
                }
            )
    return pl.DataFrame(out)


def validation() -> ValidationData:
    return ValidationData(
        queries={f"v{i}": f"{WORDS[i]} {WORDS[i + 1]} question" for i in range(8)},
        corpus={f"d{i}": f"{WORDS[i % 12]} {WORDS[(i + 1) % 12]} document {i}" for i in range(40)},
        qrels={f"v{i}": {f"d{i}": 1} for i in range(8)},
    )


def settings(**kw) -> TrainerOptions:
    base = {"eval_steps": 2, "max_seq_length": 32, "logging_steps": 1, "batch_size": 4, "precision": "fp32"}
    return TrainerOptions(**{**base, **kw})


def test_planned_steps_and_metric_names() -> None:
    assert planned_steps(100, settings(epochs=2)) == 50
    assert planned_steps(101, settings(epochs=1)) == 26
    assert planned_steps(100, settings(max_steps=7)) == 7
    assert metric_name("eval_validation_ndcg@10") == "validation_ndcg_at_10"
    assert metric_name("loss") == "loss"


def test_validation_data_keeps_positives_and_samples_the_rest() -> None:
    queries = pl.DataFrame({"query_id": ["a", "b", "c"], "text": ["qa", "qb", "qc"]})
    qrels = pl.DataFrame(
        {"query_id": ["a", "a", "b", "c"], "doc_id": ["d1", "d2", "d3", "d9"], "grade": [1, 2, 1, 0]},
        schema={"query_id": pl.String, "doc_id": pl.String, "grade": pl.Int32},
    )
    corpus = pl.DataFrame(
        {
            "doc_id": [f"d{i}" for i in range(30)],
            "title": ["" if i == 3 else f"t{i}" for i in range(30)],
            "text": ["" if i == 3 else f"text {i}" for i in range(30)],
        }
    )
    data = validation_data(queries, qrels, corpus, ["a", "b", "c"], max_queries=None, corpus_size=10, seed=0)
    assert data.queries == {"a": "qa"}  # b's only positive is empty, c has none
    assert data.qrels == {"a": {"d1": 1, "d2": 2}}
    assert len(data.corpus) == 10 and {"d1", "d2"} <= set(data.corpus)
    assert "d3" not in data.corpus and data.corpus["d1"] == "t1 text 1"
    again = validation_data(queries, qrels, corpus, ["a", "b", "c"], max_queries=None, corpus_size=10, seed=0)
    assert again.corpus == data.corpus
    with pytest.raises(ConfigError, match="none of the 1 validation queries has a judged positive"):
        validation_data(queries, qrels, corpus, ["c"], max_queries=None, corpus_size=None, seed=0)


def test_batches_never_repeat_a_text(tiny_base: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_base), device="cpu")
    train = rows(12, copies=3)  # each query in three rows, as in all-llms+bm25
    evaluator = make_evaluator(validation(), batch_size=16, device="cpu", precision="fp32")
    trainer = build_trainer(
        model, train, evaluator, settings(), per_row=5, work_dir=tmp_path, precision="fp32", device="cpu"
    )
    sampler = trainer.get_train_dataloader().batch_sampler
    assert type(sampler).__name__ == "NoDuplicatesBatchSampler"
    seen = 0
    for batch in sampler:
        queries = [train["query"][i] for i in batch]
        assert len(set(queries)) == len(queries)
        seen += len(batch)
    assert seen >= 32  # most of the 36 rows, in batches of 4 distinct queries


def test_early_stopping_and_metrics(tiny_base: Path, tmp_path: Path) -> None:
    logged: list[tuple[int, dict]] = []
    outcome = train_encoder(
        tiny_base,
        rows(40),
        validation(),
        settings(learning_rate=0.0, max_steps=20),  # nothing changes: no evaluation improves on the first
        per_row=5,
        work_dir=tmp_path / "work",
        output_dir=tmp_path / "out",
        save_max_seq_length=48,
        on_metrics=lambda step, m: logged.append((step, dict(m))),
    )
    assert outcome.planned_steps == 20
    assert outcome.stopped_early and outcome.global_step == 8  # evaluations at 2, 4, 6, 8: 3 without gain
    assert outcome.best_step == 2
    assert [s for s, _ in outcome.evaluations] == [0, 2, 4, 6, 8]
    assert outcome.best_score == pytest.approx(outcome.base_score)
    assert logged[0] == (0, {metric_name(PRIMARY_KEY): outcome.base_score})
    keys = set().union(*(m for _, m in logged))
    assert {"loss", "learning_rate", "grad_norm", "validation_ndcg_at_10", "validation_recall_at_100"} <= keys
    assert sorted({s for s, m in logged if "loss" in m}) == list(range(1, 9))

    from sentence_transformers import SentenceTransformer

    saved = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    assert saved.max_seq_length == 48
    assert set(tiny_vocab()) <= set(saved.tokenizer.get_vocab())


def test_best_checkpoint_is_kept(tiny_base: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    data = validation()
    messages: list[str] = []
    outcome = train_encoder(
        tiny_base,
        rows(60),
        data,
        settings(learning_rate=5e-3, max_steps=12, early_stopping_patience=10),
        per_row=5,
        work_dir=tmp_path / "work",
        output_dir=tmp_path / "out",
        save_max_seq_length=32,
        log=messages.append,
        progress_every_seconds=0.0,
    )
    trained = [v for s, v in outcome.evaluations if s > 0]
    assert outcome.global_step == 12 and not outcome.stopped_early
    # Step progress in the log (the Dagster event log in the asset): one line per step here, the last at 100%.
    steps = [m for m in messages if m.startswith("training: ")]
    assert len(steps) == 12 and steps[0].startswith("training: 8.3% (1/12) ")
    assert steps[-1].startswith("training: 100.0% (12/12) ") and steps[-1].endswith("ETA 0 s")
    assert outcome.best_score == pytest.approx(max(trained))
    assert outcome.best_step == next(s for s, v in outcome.evaluations if s > 0 and v == max(trained))
    saved = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    rescored = make_evaluator(data, batch_size=16, device="cpu", precision="fp32")(saved)[PRIMARY_KEY]
    assert rescored == pytest.approx(outcome.best_score, abs=1e-6)
    assert outcome.train_examples == 12 * 4 and outcome.examples_per_second > 0
