"""Hard-negative mining from BM25 hits, optionally re-scored by a cross-encoder.

Inputs are the training pairs (`query_id, query, positive_id, positive`), the training qrels (all
judgements of the split; grade > 0 = positive) and the BM25 hits of each training query
(`lib.retrieval.bm25.HITS_SCHEMA`). Output is a negative set in the shared long format (`lib.mining.negatives`).

A hit can never be a negative of a query when it is a positive of that query: **every** judged positive
of the query is excluded, by id and by normalised-text hash (`lib.mining.negatives.text_hash_expr`), so a duplicate
of a positive stored under another id is caught too. Empty passages and repeats of an earlier hit's text
are skipped as well. Because the exclusions depend on the query, all pairs of a query share the same
eligible hits; with the `random` strategy each pair draws its own sample.

Ranks are the hits' ranks in the BM25 list (1 = best). A rank window `first..last` takes negatives
from those ranks only; excluded hits inside the window are skipped, not replaced from beyond it, so a
pair can end up short, and the reason is reported (`reason` column of the statistics).

References:
    Karpukhin et al., Dense Passage Retrieval for Open-Domain Question Answering, EMNLP 2020 (BM25 hard
    negatives). Moreira et al., NV-Retriever, arXiv 2407.15831 (2024) (positive-aware mining, TopK-PercPos).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from hnr_assets.lib.data.pairs import passage_expr
from hnr_assets.lib.mining.ce_filter import false_negative_mask
from hnr_assets.lib.mining.negatives import NEGATIVES_PER_PAIR, NEGATIVES_SCHEMA, text_hash_expr
from hnr_assets.lib.runtime.errors import ConfigError, DataValidationError
from hnr_assets.lib.runtime.progress import Progress

PAIR = ["query_id", "positive_id"]
STATS_SCHEMA = {
    "query_id": pl.String,
    "positive_id": pl.String,
    "hits": pl.Int32,
    "in_window": pl.Int32,
    "positive_id_hits": pl.Int32,
    "positive_text_hits": pl.Int32,
    "duplicate_hits": pl.Int32,
    "empty_hits": pl.Int32,
    "eligible": pl.Int32,
    "negatives": pl.Int32,
    "reason": pl.String,
}


@dataclass(frozen=True)
class RankWindow:
    """BM25 ranks `first..last` (inclusive) that negatives are drawn from."""

    first: int = 1
    last: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last:
            raise ConfigError(f"rank window needs 1 <= first <= last, got {self.first}..{self.last}")


# ------------------------------------------------------------------------------------------ inputs


TEXTS_SCHEMA = {"doc_id": pl.String, "text": pl.String, "hash": pl.UInt64}


def passages_for(corpus_path: Path, doc_ids: pl.Series, texts: pl.DataFrame | None = None) -> pl.DataFrame:
    """`doc_id, text, hash` of the given documents (passage text = title + " " + text), read lazily.

    `hash` is `lib.mining.negatives.text_hash_expr` of the text (native, for comparisons within this process).
    With `texts` (`corpus_texts` of the same corpus, already in memory) the corpus file is not read again.
    """
    wanted = doc_ids.unique()
    if texts is not None:
        found = texts.join(wanted.to_frame("doc_id"), on="doc_id", how="semi")
    else:
        found = (
            pl.scan_parquet(corpus_path)
            .filter(pl.col("doc_id").is_in(wanted.implode()))
            .select("doc_id", passage_expr().alias("text"))
            .with_columns(text_hash_expr(pl.col("text")).alias("hash"))
            .collect()
        )
    missing = wanted.len() - found.height
    if missing:
        sample = wanted.filter(~wanted.is_in(found["doc_id"].implode())).head(3).to_list()
        raise DataValidationError(corpus_path, f"{missing} retrieved document ids are not in the corpus, e.g. {sample}")
    return found


def corpus_texts(corpus_path: Path, batch_rows: int = 500_000) -> pl.DataFrame:
    """`doc_id, text, hash` of every document of a corpus (as `passages_for`), read in batches.

    What the blocked miners keep in memory so that each block of queries finds its hits' texts without
    reading the corpus again: about the corpus's text size (MS MARCO: ~3.5 GB).
    """
    import pyarrow.parquet as pq

    parts = []
    for batch in pq.ParquetFile(corpus_path).iter_batches(batch_size=batch_rows, columns=["doc_id", "title", "text"]):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        parts.append(
            frame.select("doc_id", passage_expr().alias("text")).with_columns(
                text_hash_expr(pl.col("text")).alias("hash")
            )
        )
    return pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=TEXTS_SCHEMA)


def query_positives(qrels: pl.DataFrame, corpus_path: Path, texts: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every judged positive (grade > 0) of every query: `query_id, doc_id, hash` (`texts`: see `passages_for`)."""
    positives = qrels.filter(pl.col("grade") > 0).select("query_id", "doc_id").unique()
    texts = passages_for(corpus_path, positives["doc_id"], texts)
    return positives.join(texts.select("doc_id", "hash"), on="doc_id", how="left")


def annotate_hits(
    hits: pl.DataFrame, positives: pl.DataFrame, corpus_path: Path, texts: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Hits with `text`, `hash` and why each one may not be a negative.

    Adds boolean columns `positive_id` (the hit is a judged positive of its query), `positive_text`
    (same normalised text as one), `empty` (blank passage) and `duplicate` (the text repeats a better-
    ranked hit of the same query), and `excluded` (any of them). `texts`: see `passages_for`.
    """
    texts = passages_for(corpus_path, hits["doc_id"], texts) if hits.height else pl.DataFrame(schema=TEXTS_SCHEMA)
    ids = positives.select("query_id", "doc_id", pl.lit(True).alias("positive_id"))
    hashes = positives.select("query_id", "hash", pl.lit(True).alias("positive_text")).unique()
    out = (
        hits.join(texts, on="doc_id", how="left")
        .join(ids, on=["query_id", "doc_id"], how="left")
        .join(hashes, on=["query_id", "hash"], how="left")
        .with_columns(
            pl.col("positive_id").fill_null(False),
            pl.col("positive_text").fill_null(False),
            (pl.col("text").str.strip_chars() == "").alias("empty"),
        )
        .sort("query_id", "rank")
    )
    clean = ~(pl.col("positive_id") | pl.col("positive_text") | pl.col("empty"))
    # A duplicate repeats the text of a better-ranked hit that is itself usable.
    first_clean = out.filter(clean).group_by("query_id", "hash").agg(pl.col("rank").min().alias("_first_rank"))
    out = (
        out.join(first_clean, on=["query_id", "hash"], how="left")
        .with_columns((clean & (pl.col("rank") > pl.col("_first_rank"))).alias("duplicate"))
        .drop("_first_rank")
        .with_columns(
            (pl.col("positive_id") | pl.col("positive_text") | pl.col("empty") | pl.col("duplicate")).alias("excluded")
        )
    )
    return out


# ------------------------------------------------------------------------------------------- BM25


def _pair_key(seed: int) -> pl.Expr:
    """A uniform pseudo-random key per (seed, query, positive, document): stable across runs and orders."""
    prefix = f"{seed}\x1f"

    def key(s: str) -> int:
        return int.from_bytes(hashlib.blake2b((prefix + s).encode(), digest_size=8).digest(), "big") >> 1

    return (
        pl.concat_str(["query_id", "positive_id", "doc_id"], separator="\x1f")
        .map_elements(key, return_dtype=pl.Int64)
        .alias("_key")
    )


def _reason(stats: pl.DataFrame, window: RankWindow, n: int) -> pl.DataFrame:
    reason = (
        pl.when(pl.col("negatives") >= n)
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("hits") == 0)
        .then(pl.lit("no BM25 hit for the query"))
        .when(pl.col("in_window") < window.last - window.first + 1)
        .then(
            pl.format(
                "BM25 returned only {} hits in ranks {}..{}", "in_window", pl.lit(window.first), pl.lit(window.last)
            )
        )
        .otherwise(
            pl.format(
                "{} of {} hits in the window are positives by id, {} by text, {} duplicates, {} empty",
                "positive_id_hits",
                "in_window",
                "positive_text_hits",
                "duplicate_hits",
                "empty_hits",
            )
        )
    )
    return stats.with_columns(reason.alias("reason"))


def _window_stats(pairs: pl.DataFrame, annotated: pl.DataFrame, window: RankWindow) -> pl.DataFrame:
    in_window = annotated.filter(pl.col("rank").is_between(window.first, window.last))
    per_query = in_window.group_by("query_id").agg(
        pl.len().alias("in_window"),
        pl.col("positive_id").sum().alias("positive_id_hits"),
        (pl.col("positive_text") & ~pl.col("positive_id")).sum().alias("positive_text_hits"),
        pl.col("duplicate").sum().alias("duplicate_hits"),
        pl.col("empty").sum().alias("empty_hits"),
        (~pl.col("excluded")).sum().alias("eligible"),
    )
    totals = annotated.group_by("query_id").agg(pl.len().alias("hits"))
    return (
        pairs.select(PAIR)
        .join(totals, on="query_id", how="left")
        .join(per_query, on="query_id", how="left")
        .fill_null(0)
    )


def _to_negatives(
    chosen: pl.DataFrame, pairs: pl.DataFrame, source: str, order: list[str], descending: list[bool]
) -> pl.DataFrame:
    """Chosen hits (`query_id, positive_id, doc_id, text, score` + order columns) in the shared format."""
    ranked = chosen.sort([*PAIR, *order], descending=[False, False, *descending]).with_columns(
        (pl.int_range(pl.len()).over(PAIR) + 1).alias("negative_rank")
    )
    out = ranked.join(pairs.select(*PAIR, "query", "positive"), on=PAIR, how="inner").select(
        "query_id",
        "positive_id",
        "query",
        "positive",
        "negative_rank",
        pl.col("doc_id").alias("negative_id"),
        pl.col("text").alias("negative"),
        "score",
        pl.lit(source).alias("source"),
    )
    return out.cast(NEGATIVES_SCHEMA).sort(*PAIR, "negative_rank")


def select_bm25_negatives(
    pairs: pl.DataFrame,
    annotated: pl.DataFrame,
    *,
    window: RankWindow,
    strategy: Literal["top", "random"] = "top",
    seed: int = 0,
    n: int = NEGATIVES_PER_PAIR,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Pick up to `n` BM25 negatives per pair.

    Args:
        pairs: Training pairs.
        annotated: Hits from `annotate_hits`.
        window: BM25 ranks to draw from.
        strategy: `top` takes the best-ranked eligible hits; `random` a seeded uniform sample of the
            eligible hits in the window (each pair its own), then orders them by BM25 rank.
        seed: Seed of the `random` strategy.
        n: Negatives per pair.

    Returns:
        The negatives (`NEGATIVES_SCHEMA`, source `bm25`, score = BM25 score, negative_rank 1..n in
        BM25 order; `bm25_ranks` gives each one's rank in the BM25 list) and one statistics row per
        pair (`STATS_SCHEMA`, with `reason` set for pairs short of `n`).
    """
    if strategy not in ("top", "random"):
        raise ConfigError(f"BM25 negative strategy must be top or random, got {strategy!r}")
    eligible = annotated.filter(pl.col("rank").is_between(window.first, window.last) & ~pl.col("excluded"))
    cand = pairs.select(PAIR).join(eligible.select("query_id", "doc_id", "rank", "score", "text"), on="query_id")
    cand = cand.with_columns(pl.col("rank").alias("_key") if strategy == "top" else _pair_key(seed))
    chosen = cand.sort([*PAIR, "_key"]).group_by(PAIR, maintain_order=True).head(n)
    negatives = _to_negatives(chosen, pairs, "bm25", ["rank"], [False])
    stats = _window_stats(pairs, annotated, window)
    got = chosen.group_by(PAIR).agg(pl.len().alias("negatives"))
    stats = stats.join(got, on=PAIR, how="left").with_columns(pl.col("negatives").fill_null(0))
    stats = _reason(stats, window, n).select(list(STATS_SCHEMA)).cast(STATS_SCHEMA)
    return negatives, stats


def bm25_ranks(negatives: pl.DataFrame, annotated: pl.DataFrame) -> pl.DataFrame:
    """`query_id, positive_id, negative_rank, retrieval_rank`: where each chosen negative sat in the BM25 list."""
    return (
        negatives.select(*PAIR, "negative_rank", "negative_id")
        .join(
            annotated.select("query_id", pl.col("doc_id").alias("negative_id"), pl.col("rank").alias("retrieval_rank")),
            on=["query_id", "negative_id"],
            how="left",
        )
        .drop("negative_id")
    )


# ------------------------------------------------------------------------------------ cross-encoder


def ce_candidates(annotated: pl.DataFrame, top_n: int) -> pl.DataFrame:
    """The eligible hits among the BM25 top `top_n` of each query: `query_id, doc_id, rank, text`."""
    return annotated.filter((pl.col("rank") <= top_n) & ~pl.col("excluded")).select(
        "query_id", "doc_id", "rank", "text"
    )


def select_ce_negatives(
    pairs: pl.DataFrame,
    candidates: pl.DataFrame,
    candidate_scores: Sequence[float],
    positive_scores: Sequence[float],
    *,
    relative_margin: float | None,
    absolute_margin: float | None,
    n: int = NEGATIVES_PER_PAIR,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Keep, per pair, the `n` candidates the cross-encoder scores highest that pass the false-negative filter.

    Args:
        pairs: Training pairs.
        candidates: `ce_candidates(...)` rows, in any order.
        candidate_scores: Cross-encoder probability of (query, candidate), aligned with `candidates`.
        positive_scores: Cross-encoder probability of (query, positive), aligned with `pairs`.
        relative_margin, absolute_margin: The positive-aware rule (`lib.mining.ce_filter.false_negative_mask`).
        n: Negatives per pair.

    Returns:
        Negatives (source `ce`, score = cross-encoder probability, negative_rank 1..n by score) and per
        pair `query_id, positive_id, positive_score, candidates, filtered, negatives`.
    """
    if len(candidate_scores) != candidates.height or len(positive_scores) != pairs.height:
        raise ValueError("scores must align with candidates and pairs")
    cands = candidates.with_columns(pl.Series("score", np.asarray(candidate_scores, dtype=np.float64))).sort(
        "query_id", "score", "rank", descending=[False, True, False]
    )
    offsets = cands.group_by("query_id", maintain_order=True).agg(pl.len().alias("n"))
    start: dict[str, tuple[int, int]] = {}
    pos = 0
    for qid, count in offsets.iter_rows():
        start[qid] = (pos, count)
        pos += count
    scores = cands["score"].to_numpy()
    rows, stats = [], []
    for i, (qid, pid) in enumerate(pairs.select(PAIR).iter_rows()):
        first, count = start.get(qid, (0, 0))
        block = scores[first : first + count]
        drop = false_negative_mask(
            block, float(positive_scores[i]), relative_margin=relative_margin, absolute_margin=absolute_margin
        )
        kept = [first + j for j, d in enumerate(drop) if not d][:n]  # block is sorted by score
        rows.extend((i, k) for k in kept)
        stats.append((qid, pid, float(positive_scores[i]), count, int(sum(drop)), len(kept)))
    if rows:
        pair_idx, cand_idx = map(list, zip(*rows, strict=True))
    else:
        pair_idx, cand_idx = [], []
    chosen = pl.concat(
        [
            pairs.select(PAIR)[pair_idx],
            cands.select("doc_id", "text", "score", "rank")[cand_idx],
        ],
        how="horizontal",
    )
    negatives = _to_negatives(chosen, pairs, "ce", ["score", "rank"], [True, False])
    stat_frame = pl.DataFrame(
        stats,
        schema={
            "query_id": pl.String,
            "positive_id": pl.String,
            "positive_score": pl.Float64,
            "candidates": pl.Int32,
            "filtered": pl.Int32,
            "negatives": pl.Int32,
        },
        orient="row",
    )
    return negatives, stat_frame


def short_reason_ce(stats: pl.DataFrame, n: int = NEGATIVES_PER_PAIR) -> pl.DataFrame:
    """Adds `reason` to the cross-encoder statistics: why a pair has fewer than `n` negatives."""
    return stats.with_columns(
        pl.when(pl.col("negatives") >= n)
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("candidates") == 0)
        .then(pl.lit("no eligible BM25 candidate"))
        .when(pl.col("candidates") - pl.col("filtered") < n)
        .then(
            pl.format(
                "{} of {} candidates score too close to (or above) the positive, whose score is {}",
                "filtered",
                "candidates",
                pl.col("positive_score").round_sig_figs(2),
            )
        )
        .otherwise(pl.lit("fewer candidates than negatives"))
        .alias("reason")
    )


# ------------------------------------------------------------------------------- blocks of queries
# At MS MARCO scale (502,939 queries, top 100: 50M hits, ~20 GB of text) the hits of every query cannot
# be held at once. The miners below work a block of queries at a time: search, annotate, (score,)
# select, and write the block as one shard of a `lib.generation.shards.ShardStore`, so memory is bounded by the
# block and a killed run resumes after the last complete block. Every step is per query (exclusions,
# duplicates, selection), so the result is the same as mining all queries at once.

# 10,000 queries: ~1M candidates at top 100 (~1 GB with their text), one Lucene call (`bm25.SEARCH_CHUNK_HITS`),
# 51 resumable blocks for MS MARCO. Measured: blocks of 50,000 held as much as mining 1M passages at once.
MINING_BLOCK_QUERIES = 10_000
MINING_TABLES = ("pairs", "negatives", "ranks", "counts")
Search = Callable[[pl.DataFrame, int], pl.DataFrame]
Log = Callable[[str], None]


def _nolog(_: str) -> None:
    return None


def _queries_of(pairs: pl.DataFrame) -> pl.DataFrame:
    return pairs.select("query_id", pl.col("query").alias("text")).unique("query_id", maintain_order=True)


def mine_in_blocks(
    pairs: pl.DataFrame,
    store,
    mine_block: Callable[[pl.DataFrame, pl.DataFrame], dict[str, pl.DataFrame]],
    *,
    block_queries: int = MINING_BLOCK_QUERIES,
    label: str = "mining",
    log: Log = _nolog,
) -> int:
    """Run `mine_block(block_pairs, block_queries)` on every block of queries no shard holds yet.

    Args:
        pairs: Training pairs (`query_id, query, positive_id, positive`).
        store: An entered `lib.generation.shards.ShardStore` whose `pairs` table holds one row per mined pair.
        mine_block: Returns the shard's tables for the pairs of a block and its queries (`query_id, text`).
        block_queries: Queries per block.
        label: Name in the progress messages.
        log: Where progress goes (one message per block: share done, rate, time left).

    Returns:
        The number of queries resumed from earlier runs.
    """
    if block_queries < 1:
        raise ConfigError(f"block_queries must be >= 1, got {block_queries}")
    queries = _queries_of(pairs)
    done = store.done_pairs()
    resumed = 0
    if done:
        done_ids = pl.Series("query_id", sorted({q for q, _ in done}), dtype=pl.String)
        before = queries.height
        queries = queries.filter(~pl.col("query_id").is_in(done_ids.implode()))
        resumed = before - queries.height
        log(f"{label}: {resumed} queries already mined in {store.folder}; {queries.height} to go")
    progress = Progress(label, queries.height, log, unit="queries", every_seconds=0)
    for start in range(0, queries.height, block_queries):
        block = queries.slice(start, block_queries)
        block_pairs = pairs.join(block.select("query_id"), on="query_id", how="semi")
        store.write(mine_block(block_pairs, block))
        progress.update(block.height)
    return resumed


def _corpus_inputs(store, pairs: pl.DataFrame, qrels: pl.DataFrame, corpus_path: Path) -> dict[str, pl.DataFrame]:
    """The corpus text (`corpus_texts`) and every query's positives, read once; nothing when all is mined."""
    if len(store.done_pairs()) >= pairs.height:
        return {}
    texts = corpus_texts(corpus_path)
    return {"texts": texts, "positives": query_positives(qrels, corpus_path, texts)}


def collect_blocks(store, pairs: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Every shard's tables, concatenated: `negatives` sorted by pair and rank, `pairs` in `pairs` order.

    Raises:
        DataValidationError: A pair of `pairs` is in no shard.
    """
    out = {name: store.read(name) for name in store.tables}
    stats = out["pairs"]
    if stats is None or stats.height != pairs.height:
        raise DataValidationError(store.folder, f"{0 if stats is None else stats.height} of {pairs.height} pairs mined")
    out["pairs"] = pairs.select(PAIR).join(stats, on=PAIR, how="left", maintain_order="left")
    out["negatives"] = out["negatives"].sort(*PAIR, "negative_rank")
    return out


def mine_bm25_blocks(
    pairs: pl.DataFrame,
    qrels: pl.DataFrame,
    corpus_path: Path,
    search: Search,
    store,
    *,
    window: RankWindow,
    strategy: Literal["top", "random"] = "top",
    seed: int = 0,
    block_queries: int = MINING_BLOCK_QUERIES,
    log: Log = _nolog,
) -> dict[str, pl.DataFrame]:
    """BM25 negatives of every pair, a block of queries at a time (`mine_in_blocks`), resumable.

    Args:
        pairs: Training pairs.
        qrels: Training judgements (`query_id, doc_id, grade`).
        corpus_path: The training corpus the index was built from.
        search: `(queries, k) -> hits` (`lib.retrieval.base.BM25Engine.search` on the index).
        store: An entered `ShardStore` with `MINING_TABLES`.
        window, strategy, seed: As in `select_bm25_negatives`.
        block_queries: Queries per block (a shard).
        log: Progress messages.

    Returns:
        `negatives` (sorted by pair and rank), `pairs` (the statistics, `STATS_SCHEMA`, in `pairs` order),
        `ranks` (`bm25_ranks`) and `counts` (one row per block: queries, hits, excluded hits, seconds).
    """
    inputs = _corpus_inputs(store, pairs, qrels, corpus_path)

    def block(block_pairs: pl.DataFrame, queries: pl.DataFrame) -> dict[str, pl.DataFrame]:
        started = time.perf_counter()
        hits = search(queries, window.last)
        searched = time.perf_counter()
        own = inputs["positives"].join(queries.select("query_id"), on="query_id", how="semi")
        annotated = annotate_hits(hits, own, corpus_path, inputs["texts"])
        negatives, stats = select_bm25_negatives(block_pairs, annotated, window=window, strategy=strategy, seed=seed)
        excluded = annotated.filter(pl.col("rank") <= window.last)
        counts = pl.DataFrame(
            {
                "queries": [queries.height],
                "hits": [hits.height],
                "excluded_positive_id": [int(excluded["positive_id"].sum())],
                "excluded_positive_text": [int((excluded["positive_text"] & ~excluded["positive_id"]).sum())],
                "excluded_duplicate": [int(excluded["duplicate"].sum())],
                "search_seconds": [searched - started],
                "seconds": [time.perf_counter() - started],
            }
        )
        return {"pairs": stats, "negatives": negatives, "ranks": bm25_ranks(negatives, annotated), "counts": counts}

    mine_in_blocks(pairs, store, block, block_queries=block_queries, label="bm25_negatives", log=log)
    inputs.clear()  # the corpus text goes before every shard is read back
    return collect_blocks(store, pairs)


def mine_ce_blocks(
    pairs: pl.DataFrame,
    qrels: pl.DataFrame,
    corpus_path: Path,
    search: Search,
    scorer,
    store,
    *,
    top_n: int,
    relative_margin: float | None,
    absolute_margin: float | None,
    block_queries: int = MINING_BLOCK_QUERIES,
    log: Log = _nolog,
    progress_every_seconds: float = 30.0,
) -> dict[str, pl.DataFrame]:
    """Cross-encoder negatives of every pair, a block of queries at a time (`mine_in_blocks`), resumable.

    Per block: BM25 top `top_n`, positives and duplicates removed (`ce_candidates`), every candidate and
    every positive scored by `scorer` (`lib.mining.cross_encoder.CrossEncoderScorer`), then `select_ce_negatives`
    and `short_reason_ce`. The scores of a finished block are not kept, only what was selected.

    Returns:
        `negatives`, `pairs` (statistics with `reason`, in `pairs` order), `ranks` (each negative's BM25
        rank) and `counts` (per block: queries, hits, candidates, scored pairs, scoring seconds).
    """
    inputs = _corpus_inputs(store, pairs, qrels, corpus_path)

    def block(block_pairs: pl.DataFrame, queries: pl.DataFrame) -> dict[str, pl.DataFrame]:
        started = time.perf_counter()
        hits = search(queries, top_n)
        own = inputs["positives"].join(queries.select("query_id"), on="query_id", how="semi")
        candidates = ce_candidates(annotate_hits(hits, own, corpus_path, inputs["texts"]), top_n)
        candidates = candidates.join(queries.rename({"text": "query"}), on="query_id", how="left")
        total = candidates.height + block_pairs.height
        progress = Progress("ce_negatives: scoring", total, log, unit="pairs", every_seconds=progress_every_seconds)
        scoring = time.perf_counter()
        cand_scores = scorer.score(candidates["query"].to_list(), candidates["text"].to_list(), progress.update)
        pos_scores = scorer.score(block_pairs["query"].to_list(), block_pairs["positive"].to_list(), progress.update)
        scored = time.perf_counter()
        negatives, stats = select_ce_negatives(
            block_pairs,
            candidates,
            cand_scores,
            pos_scores,
            relative_margin=relative_margin,
            absolute_margin=absolute_margin,
        )
        counts = pl.DataFrame(
            {
                "queries": [queries.height],
                "hits": [hits.height],
                "candidates": [candidates.height],
                "scored_pairs": [total],
                "score_seconds": [scored - scoring],
                "seconds": [time.perf_counter() - started],
            }
        )
        ranks = negatives.select(*PAIR, "negative_rank", "negative_id").join(
            candidates.select(
                "query_id", pl.col("doc_id").alias("negative_id"), pl.col("rank").alias("retrieval_rank")
            ),
            on=["query_id", "negative_id"],
            how="left",
        )
        return {
            "pairs": short_reason_ce(stats),
            "negatives": negatives,
            "ranks": ranks.drop("negative_id"),
            "counts": counts,
        }

    mine_in_blocks(pairs, store, block, block_queries=block_queries, label="ce_negatives", log=log)
    inputs.clear()  # the corpus text goes before every shard is read back
    return collect_blocks(store, pairs)
