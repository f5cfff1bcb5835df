"""Exact search, normalisation, the embedding cache, and encoding with a tiny real encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hnr_assets.lib.retrieval import dense
from hnr_assets.lib.runtime.errors import ConfigError, DataValidationError
from hnr_assets_tests.encoder_fixtures import make_tiny_encoder


def _unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    return dense.normalize(rng.normal(size=(n, dim)).astype(np.float32))


def _brute_force(q: np.ndarray, d: np.ndarray, k: int) -> list[list[int]]:
    scores = q @ d.T
    return [sorted(range(d.shape[0]), key=lambda j, i=i: (-scores[i, j], j))[:k] for i in range(q.shape[0])]


@pytest.mark.parametrize(("doc_block", "query_block"), [(50_000, 1024), (7, 2), (1, 1)])
def test_exact_search_matches_brute_force_in_any_blocking(doc_block: int, query_block: int) -> None:
    rng = np.random.default_rng(0)
    q, d = _unit(rng, 5), _unit(rng, 40)
    doc_ids = [f"d{i}" for i in range(40)]
    run = dense.exact_search(
        q, d, [f"q{i}" for i in range(5)], doc_ids, top_k=10, doc_block=doc_block, query_block=query_block
    )
    expected = _brute_force(q, d, 10)
    for i in range(5):
        hits = run.filter(run["query_id"] == f"q{i}").sort("rank")
        assert hits["doc_id"].to_list() == [doc_ids[j] for j in expected[i]]
        assert hits["rank"].to_list() == list(range(1, 11))
        assert np.allclose(hits["score"].to_numpy(), (q[i] @ d.T)[expected[i]], atol=1e-6)


def test_identical_id_is_dropped_and_top_k_still_filled() -> None:
    rng = np.random.default_rng(1)
    d = _unit(rng, 20)
    q = d[[3]].copy()  # the query is document d3 itself: d3 is its best hit
    run = dense.exact_search(q, d, ["d3"], [f"d{i}" for i in range(20)], top_k=5)
    assert "d3" not in run["doc_id"].to_list()
    assert run.height == 5
    kept = dense.exact_search(q, d, ["d3"], [f"d{i}" for i in range(20)], top_k=5, exclude_identical_ids=False)
    assert kept["doc_id"][0] == "d3"


def test_top_k_larger_than_corpus_and_ties_are_deterministic() -> None:
    d = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    run = dense.exact_search(np.array([[1.0, 0.0]], dtype=np.float32), d, ["q"], ["b", "a", "c"], top_k=1000)
    assert run["doc_id"].to_list() == ["b", "a", "c"]  # tie broken by corpus position
    assert run.schema == dense.RUN_SCHEMA


def test_mismatched_shapes_are_errors() -> None:
    with pytest.raises(ValueError, match="differ in number"):
        dense.exact_search(np.zeros((2, 4)), np.zeros((3, 4)), ["q"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="query dim 4 != document dim 5"):
        dense.exact_search(np.zeros((1, 4)), np.zeros((3, 5)), ["q"], ["a", "b", "c"])


def test_normalize_keeps_zero_rows() -> None:
    out = dense.normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="precision 'int4'"):
        dense.EncodeOptions(precision="int4")
    with pytest.raises(ConfigError, match="must be positive"):
        dense.EncodeOptions(batch_size=0)


def _key(**changes) -> dense.CacheKey:
    base = {
        "model": "m1",
        "dataset": "scifact",
        "kind": "corpus",
        "content": "c1",
        "max_length": 256,
        "precision": "bf16",
    }
    return dense.CacheKey(**{**base, **changes})


def test_cache_round_trip_and_key_sensitivity(tmp_path: Path) -> None:
    cache = dense.EmbeddingCache(tmp_path)
    matrix = _unit(np.random.default_rng(2), 4)
    ids = ["a", "b", "c", "d"]
    assert cache.load(_key(), ids) is None
    folder = cache.store(_key(), ids, matrix, {"encode_seconds": 1.0})
    assert folder.name.startswith("scifact-corpus-")
    assert np.array_equal(cache.load(_key(), ids), matrix)
    # anything the embeddings depend on changes the key; different ids never reuse an entry
    for change in ({"model": "m2"}, {"content": "c2"}, {"kind": "queries"}, {"max_length": 128}, {"precision": "fp32"}):
        assert _key(**change).digest != _key().digest
        assert cache.load(_key(**change), ids) is None
    assert cache.load(_key(), ["a", "b", "c", "x"]) is None


def test_corrupt_cache_entry_is_ignored(tmp_path: Path) -> None:
    cache = dense.EmbeddingCache(tmp_path)
    ids = ["a", "b"]
    folder = cache.store(_key(), ids, _unit(np.random.default_rng(3), 2), {})
    (folder / "embeddings.npy").write_bytes(b"not numpy")
    assert cache.load(_key(), ids) is None


def test_passages_fingerprint_depends_on_ids_and_text() -> None:
    base = dense.passages_fingerprint(["a", "b"], ["x", "y"])
    assert base == dense.passages_fingerprint(["a", "b"], ["x", "y"])
    assert base != dense.passages_fingerprint(["a", "b"], ["x", "y "])
    assert base != dense.passages_fingerprint(["b", "a"], ["x", "y"])


def test_model_fingerprint(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="not a model folder"):
        dense.model_fingerprint(tmp_path / "nothing")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"1")
    first = dense.model_fingerprint(tmp_path / "m")
    (tmp_path / "m" / "w.bin").write_bytes(b"2")
    assert dense.model_fingerprint(tmp_path / "m") != first


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "model", seed=3)


def test_encode_is_normalised_and_independent_of_order_and_batching(tiny_encoder_dir: Path) -> None:
    texts = ["vaccine dose", "what is known about heart artery blood pressure in cardiology", "a", "gene dna"] * 3
    enc = dense.load_encoder(tiny_encoder_dir, dense.EncodeOptions(max_length=64, batch_size=2, precision="fp32"))
    assert enc.options.device == "cpu" and enc.options.precision == "fp32"
    out = dense.encode(enc, texts)
    assert out.shape == (12, 32) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    again = dense.encode(enc, texts[::-1])[::-1]
    assert np.allclose(out, again, atol=1e-5)
    one_by_one = np.vstack([dense.encode(enc, [t]) for t in texts[:4]])
    assert np.allclose(out[:4], one_by_one, atol=1e-5)
    assert dense.encode(enc, []).shape[0] == 0


def test_embeddings_are_cached_and_the_model_is_loaded_only_to_encode(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    options = dense.EncodeOptions(max_length=64, batch_size=4, precision="fp32")
    cache = dense.EmbeddingCache(tmp_path / "cache")
    ids, texts = ["a", "b", "c"], ["vaccine dose", "heart artery", "gene"]
    seen: list[int] = []
    first_source = dense.EmbeddingSource(tiny_encoder_dir, options, cache)
    first = first_source.embed("tiny", "corpus", ids, texts, seen.append)
    assert not first.cache_hit and sum(seen) == 3 and first_source.loaded
    seen.clear()
    source = dense.EmbeddingSource(tiny_encoder_dir, options, cache)
    second = source.embed("tiny", "corpus", ids, texts, seen.append)
    assert second.cache_hit and seen == [] and not source.loaded  # nothing encoded, network never built
    assert np.array_equal(first.matrix, second.matrix)
    assert not source.embed("tiny", "queries", ids, texts).cache_hit  # queries are their own entry
    assert not source.embed("tiny", "corpus", ids, ["vaccine dose", "heart artery", "genome"]).cache_hit
    uncached = dense.EmbeddingSource(tiny_encoder_dir, options, None).embed("tiny", "corpus", ids, texts)
    assert not uncached.cache_hit and np.allclose(uncached.matrix, first.matrix, atol=1e-6)


def test_bf16_autocast_stays_close_to_fp32(tiny_encoder_dir: Path) -> None:
    texts = ["vaccine dose trial", "heart artery", "gene dna sequencing expression"]
    fp32 = dense.encode(dense.load_encoder(tiny_encoder_dir, dense.EncodeOptions(precision="fp32")), texts)
    bf16 = dense.encode(dense.load_encoder(tiny_encoder_dir, dense.EncodeOptions(precision="bf16")), texts)
    assert bf16.dtype == np.float32
    assert np.min(np.sum(fp32 * bf16, axis=1)) > 0.99


def test_a_folder_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("hi")
    with pytest.raises(DataValidationError, match="cannot load a sentence-transformers model"):
        dense.load_encoder(tmp_path / "m", dense.EncodeOptions())


def test_normalize_in_blocks_and_in_place_equals_the_whole_matrix_at_once(monkeypatch) -> None:
    from hnr_assets.lib.retrieval import dense

    matrix = np.random.default_rng(1).standard_normal((1000, 16)).astype(np.float32)
    matrix[7] = 0.0
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    expected = matrix / np.where(norms > 0, norms, 1.0)
    monkeypatch.setattr(dense, "NORMALIZE_BLOCK_ROWS", 64)
    copy = dense.normalize(matrix)
    assert copy is not matrix and np.array_equal(copy, expected) and not np.array_equal(matrix, expected)
    own = matrix.copy()
    assert dense.normalize(own, inplace=True) is own and np.array_equal(own, expected)
