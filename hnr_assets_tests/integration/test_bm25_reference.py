"""BM25 on SciFact reproduces Anserini's BEIR flat regression (nDCG@10 0.6789), and mining on its train split."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.data.beir import convert_beir_split, load_qrels
from hnr_assets.lib.data.pairs import build_pairs
from hnr_assets.lib.evaluation.metrics import evaluate_run
from hnr_assets.lib.mining.negatives import coverage, validate_negatives
from hnr_assets.lib.mining.selection import RankWindow, annotate_hits, query_positives, select_bm25_negatives
from hnr_assets.lib.retrieval.base import BM25Config
from hnr_assets.lib.retrieval.bm25 import ANSERINI_FLAT_NDCG10, REFERENCE_TOLERANCE, hits_to_run, make_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def scifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hnr_assets_tests.conftest import SHARED_DATASETS

    if not SHARED_DATASETS.is_dir():
        pytest.fail(f"{SHARED_DATASETS} is missing: clone the project beside ../shared")
    out = tmp_path_factory.mktemp("scifact")
    convert_beir_split(SHARED_DATASETS / "scifact", "test", out)
    return out


@pytest.mark.parametrize("backend", ["pyserini", "bm25s"])
def test_scifact_ndcg_matches_the_anserini_reference(scifact: Path, tmp_path: Path, backend: str) -> None:
    engine = make_engine(BM25Config(backend=backend, k1=0.9, b=0.4, threads=2, java_heap="1g"))
    handle = engine.build(scifact / "corpus.parquet", tmp_path / "index")
    hits = engine.search(handle, pl.read_parquet(scifact / "queries.parquet"), 1000)
    means, _ = evaluate_run(load_qrels(scifact / "qrels.parquet"), hits_to_run(hits))
    reference = ANSERINI_FLAT_NDCG10["scifact"]
    assert abs(means["ndcg@10"] - reference) <= REFERENCE_TOLERANCE[backend], means
    if backend == "pyserini":  # Lucene is the reference itself
        assert means["recall@100"] == pytest.approx(0.9253, abs=0.0005)


def test_scifact_train_bm25_negatives_are_sound(shared_datasets: Path, tmp_path: Path) -> None:
    convert_beir_split(shared_datasets / "scifact", "train", tmp_path)
    pairs, _ = build_pairs(*(pl.read_parquet(tmp_path / f"{n}.parquet") for n in ("queries", "qrels", "corpus")))
    corpus = tmp_path / "corpus.parquet"
    engine = make_engine(BM25Config(backend="bm25s"))
    handle = engine.build(corpus, tmp_path / "index")
    queries = pairs.select("query_id", pl.col("query").alias("text")).unique("query_id")
    hits = engine.search(handle, queries, 30)
    annotated = annotate_hits(hits, query_positives(pl.read_parquet(tmp_path / "qrels.parquet"), corpus), corpus)
    negatives, stats = select_bm25_negatives(pairs, annotated, window=RankWindow(1, 30))
    assert pairs.height == 919
    assert all(not v for v in validate_negatives(negatives).values())
    assert coverage(negatives, pairs)["full_share"] >= 0.99
    assert stats["reason"].null_count() == coverage(negatives, pairs)["full"]
