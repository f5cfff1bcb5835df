"""The `before` variant of `benchmarks/scale.py`: main's code (commit 4bd43a9) for what issue 17 changed.

Every function below is copied verbatim from main, so that the benchmark measures the old and the new
implementation side by side in the same run (`--variants before,after`); the adapters at the end call
them the way main's assets did. Everything not listed here is the package's own code (`scale_after`).
The names below are those of main's layout then (before issue 15 grouped `lib/` by stage); only the
imports follow the new homes (`lib.mining.selection`, `lib.retrieval.base`, `lib.generation.runner`, ...).

Copied: `lib.mining.passages_for`, `query_positives`, `annotate_hits`; `lib.negatives.validate_negatives`
(and its `_hash_col`); `lib.training_sets.apply_ce_filter`, `validate_training_set`; `lib.dense.normalize`;
`lib.generation.generate_negatives`; `lib.bm25.BM25Engine.search`, `Bm25sEngine._build` and `_search`;
`lib.cross_encoder.CrossEncoderScorer.score`;
and the bodies of the `bm25_negatives` and `ce_negatives` assets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import scale_after
from scale_after import (  # noqa: F401  (unchanged by the issue: the package's code)
    assemble_training_set,
    build_pairs,
    collect_outputs,
    common_pairs,
    convert_beir_split,
    select_pairs,
    summarize,
    validate_pairs,
    validate_run,
    validate_stored_split,
    write_outputs,
    write_scores,
)

from hnr_assets.lib.data.pairs import passage_expr
from hnr_assets.lib.generation.backends import Engine
from hnr_assets.lib.generation.llm_output import PairValidator
from hnr_assets.lib.generation.runner import (
    GenerationPlan,
    RunReport,
    _absorb,
    _PairState,
    _requests_for,
    _shard_tables,
)
from hnr_assets.lib.generation.shards import ShardStore
from hnr_assets.lib.mining.ce_filter import false_negative_mask
from hnr_assets.lib.mining.cross_encoder import sigmoid
from hnr_assets.lib.mining.negatives import NEGATIVES_PER_PAIR, NEGATIVES_SCHEMA, text_hash
from hnr_assets.lib.mining.selection import (
    RankWindow,
    bm25_ranks,
    ce_candidates,
    select_bm25_negatives,
    select_ce_negatives,
    short_reason_ce,
)
from hnr_assets.lib.retrieval.base import (
    HITS_SCHEMA,
    SEARCH_CHUNK_QUERIES,
    BM25Config,
    IndexHandle,
    Log,
    iter_passages,
)
from hnr_assets.lib.retrieval.base import nolog as _nolog
from hnr_assets.lib.retrieval.bm25s_engine import Bm25sEngine
from hnr_assets.lib.retrieval.lucene import LuceneEngine
from hnr_assets.lib.runtime.errors import DataValidationError, HnrError
from hnr_assets.lib.runtime.progress import Progress
from hnr_assets.lib.training.training_sets import PAIR, SPLITS, negative_columns, training_set_schema

# ------------------------------------------------------------------------------------- lib.mining


def passages_for(corpus_path: Path, doc_ids: pl.Series) -> pl.DataFrame:
    """`doc_id, text, hash` of the given documents (passage text = title + " " + text), read lazily."""
    wanted = doc_ids.unique()
    found = (
        pl.scan_parquet(corpus_path)
        .filter(pl.col("doc_id").is_in(wanted.implode()))
        .select("doc_id", passage_expr().alias("text"))
        .collect()
    )
    missing = wanted.len() - found.height
    if missing:
        sample = wanted.filter(~wanted.is_in(found["doc_id"].implode())).head(3).to_list()
        raise DataValidationError(corpus_path, f"{missing} retrieved document ids are not in the corpus, e.g. {sample}")
    return found.with_columns(pl.col("text").map_elements(text_hash, return_dtype=pl.String).alias("hash"))


def query_positives(qrels: pl.DataFrame, corpus_path: Path) -> pl.DataFrame:
    """Every judged positive (grade > 0) of every query: `query_id, doc_id, hash`."""
    positives = qrels.filter(pl.col("grade") > 0).select("query_id", "doc_id").unique()
    texts = passages_for(corpus_path, positives["doc_id"])
    return positives.join(texts.select("doc_id", "hash"), on="doc_id", how="left")


def annotate_hits(hits: pl.DataFrame, positives: pl.DataFrame, corpus_path: Path) -> pl.DataFrame:
    """Hits with `text`, `hash` and why each one may not be a negative.

    Adds boolean columns `positive_id` (the hit is a judged positive of its query), `positive_text`
    (same normalised text as one), `empty` (blank passage) and `duplicate` (the text repeats a better-
    ranked hit of the same query), and `excluded` (any of them).
    """
    texts = (
        passages_for(corpus_path, hits["doc_id"])
        if hits.height
        else pl.DataFrame(schema={"doc_id": pl.String, "text": pl.String, "hash": pl.String})
    )
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


# ---------------------------------------------------------------------------------- lib.negatives


def _hash_col(col: str) -> pl.Expr:
    return pl.col(col).map_elements(text_hash, return_dtype=pl.String)


def validate_negatives(df: pl.DataFrame, *, per_pair: int = NEGATIVES_PER_PAIR) -> dict[str, list[str]]:
    """Check a negative set against the contract.

    Returns:
        Problems grouped by check name (empty lists when the set is sound):
        `schema`, `not_positive` (no negative equals its positive, by id or by normalised text),
        `distinct` (no two negatives of a pair are the same passage, by id or normalised text),
        `ranks` (ranks 1..n without gaps, at most `per_pair`).
    """
    problems: dict[str, list[str]] = {"schema": [], "not_positive": [], "distinct": [], "ranks": []}
    if dict(df.schema) != NEGATIVES_SCHEMA:
        problems["schema"].append(f"schema {dict(df.schema)} differs from {NEGATIVES_SCHEMA}")
        return problems
    required = ["query_id", "positive_id", "query", "positive", "negative_rank", "negative", "source"]
    for col in required:
        if df[col].null_count():
            problems["schema"].append(f"{df[col].null_count()} null values in {col}")
    empty = df.filter(pl.col("negative").str.strip_chars() == "").height
    if empty:
        problems["schema"].append(f"{empty} empty negatives")
    if df.height == 0:
        return problems

    hashed = df.with_columns(_hash_col("negative").alias("_neg_hash"), _hash_col("positive").alias("_pos_hash"))
    by_id = hashed.filter(pl.col("negative_id").is_not_null() & (pl.col("negative_id") == pl.col("positive_id")))
    by_text = hashed.filter(pl.col("_neg_hash") == pl.col("_pos_hash"))
    if by_id.height:
        problems["not_positive"].append(f"{by_id.height} negatives have their positive's id")
    if by_text.height:
        problems["not_positive"].append(f"{by_text.height} negatives have their positive's text")

    pair = ["query_id", "positive_id"]
    dup_text = hashed.select(pl.struct(*pair, "_neg_hash").is_duplicated().sum()).item()
    if dup_text:
        problems["distinct"].append(f"{dup_text} rows repeat another negative of the same pair (normalised text)")
    with_id = hashed.filter(pl.col("negative_id").is_not_null())
    dup_id = with_id.select(pl.struct(*pair, "negative_id").is_duplicated().sum()).item()
    if dup_id:
        problems["distinct"].append(f"{dup_id} rows repeat another negative id of the same pair")

    ranks = df.group_by(pair).agg(
        pl.col("negative_rank").sort().alias("ranks"),
        pl.len().alias("n"),
        pl.col("negative_rank").n_unique().alias("u"),
    )
    bad = ranks.filter(
        (pl.col("n") > per_pair)
        | (pl.col("u") != pl.col("n"))
        | (pl.col("ranks").list.first() != 1)
        | (pl.col("ranks").list.last() != pl.col("n"))
    )
    if bad.height:
        problems["ranks"].append(f"{bad.height} pairs have ranks that are not 1..n (n <= {per_pair})")
    return problems


# ------------------------------------------------------------------------------- lib.training_sets


def apply_ce_filter(
    negatives: pl.DataFrame,
    scores: pl.DataFrame,
    *,
    relative_margin: float | None,
    absolute_margin: float | None,
) -> tuple[pl.DataFrame, int]:
    """Drop negatives the cross-encoder scores as likely positives (positive-aware rule).

    Args:
        negatives: One LLM negative set (long format).
        scores: Cross-encoder probabilities of those negatives and of each pair's positive
            (`CE_SCORES_SCHEMA`), one row per negative.
        relative_margin: See `ce_filter.false_negative_mask`.
        absolute_margin: See `ce_filter.false_negative_mask`.

    Returns:
        The kept negatives (same schema, ranks unchanged) and the number dropped.

    Raises:
        DataValidationError: A negative has no score (the scores are stale for this negative set).
    """
    keys = [*PAIR, "negative_rank"]
    joined = negatives.join(scores.select(*keys, "negative_score", "positive_score"), on=keys, how="left")
    missing = joined.filter(pl.col("negative_score").is_null() | pl.col("positive_score").is_null()).height
    if missing:
        raise DataValidationError(
            "cross-encoder scores",
            f"{missing} of {negatives.height} negatives have no score; rescore this negative set",
        )
    # Sorted by pair, the groups of partition_by concatenate back to `ordered`, row for row.
    ordered = joined.sort(keys)
    drop: list[bool] = []
    for group in ordered.partition_by(PAIR, maintain_order=True):
        drop.extend(
            false_negative_mask(
                group["negative_score"].to_list(),
                float(group["positive_score"][0]),
                relative_margin=relative_margin,
                absolute_margin=absolute_margin,
            )
        )
    kept = ordered.filter(~pl.Series(drop, dtype=pl.Boolean)) if drop else ordered
    return kept.select(negatives.columns), ordered.height - kept.height


def validate_training_set(rows: pl.DataFrame, per_row: int) -> dict[str, list[str]]:
    """Check a stored training set.

    Returns:
        Problems by check name (empty lists when sound): `schema` (columns, types, no null or empty
        text, known split values), `not_positive` (no negative equals its positive by normalised text),
        `split` (no query on both sides of the split).
    """
    problems: dict[str, list[str]] = {"schema": [], "not_positive": [], "split": []}
    expected = training_set_schema(per_row)
    if dict(rows.schema) != expected:
        problems["schema"].append(f"schema {dict(rows.schema)} differs from {expected}")
        return problems
    if rows.height == 0:
        problems["schema"].append("no rows")
        return problems
    for col in ["query_id", "positive_id", "query", "positive", *negative_columns(per_row), "source"]:
        bad = rows.filter(pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")).height
        if bad:
            problems["schema"].append(f"{bad} rows have a null or empty {col}")
    unknown = rows.filter(~pl.col("split").is_in(list(SPLITS))).height
    if unknown:
        problems["schema"].append(f"{unknown} rows have a split other than {SPLITS}")

    positive_hash = rows["positive"].map_elements(text_hash, return_dtype=pl.String)
    for col in negative_columns(per_row):
        same = (rows[col].map_elements(text_hash, return_dtype=pl.String) == positive_hash).sum()
        if same:
            problems["not_positive"].append(f"{same} rows have {col} equal to their positive (normalised text)")

    both = rows.group_by("query_id").agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1)
    if both.height:
        sample = ", ".join(both["query_id"].head(5).to_list())
        problems["split"].append(f"{both.height} queries are on both sides of the split, e.g. {sample}")
    return problems


# ---------------------------------------------------------------------------------------- lib.dense


def normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float32 (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def normalize_encoded(matrix):
    """What main's `lib.dense.encode` did with the matrix it had just filled."""
    return normalize(matrix)


# ----------------------------------------------------------------------------------- lib.generation


def generate_negatives(
    pairs: pl.DataFrame,
    engine: Engine,
    plan: GenerationPlan,
    store: ShardStore,
    *,
    log: Callable[[str], None] = lambda _msg: None,
    on_shard: Callable[[int], None] | None = None,
) -> RunReport:
    """Generate negatives for every pair the store does not hold yet.

    Args:
        pairs: Training pairs (`query_id`, `positive_id`, `query`, `positive`).
        engine: A loaded generator.
        plan: Prompt, retries, validation, sharding.
        store: The shard store (entered: locked).
        log: Where progress notes go.
        on_shard: Called with the number of pairs after each shard is written (progress).

    Returns:
        What this run did.

    Raises:
        HnrError: The engine returned results that do not match the requests.
    """
    started = time.perf_counter()
    report = RunReport(pairs_total=pairs.height)
    done = store.done_pairs()
    todo = pairs.filter(
        ~pl.struct("query_id", "positive_id").map_elements(
            lambda s: (s["query_id"], s["positive_id"]) in done, return_dtype=pl.Boolean
        )
    )
    report.pairs_skipped = pairs.height - todo.height
    if report.pairs_skipped:
        log(f"{plan.source}: {report.pairs_skipped} of {pairs.height} pairs already done in {store.folder}")
    rows = todo.select("query_id", "positive_id", "query", "positive").rows()
    for start in range(0, len(rows), plan.pairs_per_shard):
        shard_started = time.perf_counter()
        states = [
            _PairState(qid, pid, q, p, PairValidator(q, p, plan.rules, plan.wanted))
            for qid, pid, q, p in rows[start : start + plan.pairs_per_shard]
        ]
        rejections: list[dict] = []
        completions: list[dict] = []
        shard = {"requests": 0, "completions": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
        for attempt in range(plan.max_attempts):
            active = [i for i, s in enumerate(states) if not s.validator.full]
            if not active:
                break
            requests = _requests_for(states, active, plan, attempt)
            t0 = time.perf_counter()
            results = engine.generate(requests)
            shard["seconds"] += time.perf_counter() - t0
            if [r.request_id for r in results] != [r.request_id for r in requests]:
                raise HnrError(f"engine {engine.name} returned results that do not match its requests")
            for index, request, result in zip(active, requests, results, strict=True):
                state = states[index]
                state.attempts += 1
                _absorb(result, request, state, plan, attempt, rejections, completions, report.reasons)
                shard["requests"] += 1
                shard["completions"] += len(result.completions)
                shard["prompt_tokens"] += result.prompt_tokens
                shard["completion_tokens"] += sum(c.tokens for c in result.completions)
        stats = {
            "pairs": len(states),
            "requests": shard["requests"],
            "completions": shard["completions"],
            "prompt_tokens": shard["prompt_tokens"],
            "completion_tokens": shard["completion_tokens"],
            "generate_seconds": shard["seconds"],
            "wall_seconds": time.perf_counter() - shard_started,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        store.write(_shard_tables(states, plan, rejections, completions, stats))
        report.shards_written += 1
        report.pairs_generated += len(states)
        report.requests += shard["requests"]
        report.completions += shard["completions"]
        report.prompt_tokens += shard["prompt_tokens"]
        report.completion_tokens += shard["completion_tokens"]
        report.generate_seconds += shard["seconds"]
        if on_shard is not None:
            on_shard(len(states))
    report.wall_seconds = time.perf_counter() - started
    return report


# ----------------------------------------------------------------------------------------- lib.bm25


class Bm25sEngineBefore(Bm25sEngine):
    """main's bm25s engine: the whole corpus tokenised in one call; `BM25.retrieve` selects the top k
    over every document."""

    def _build(self, corpus_path: Path, index_dir: Path, scratch: Path, log: Log) -> dict[str, int]:
        import bm25s

        frame = pl.concat(list(iter_passages(corpus_path)))
        tokenizer = self._tokenizer()
        tokens = tokenizer.tokenize(frame["contents"].to_list(), return_as="tuple", show_progress=False)
        # bm25s gives a document without any token the single token "" (so that it can be indexed).
        empty_id = tokenizer.get_vocab_dict().get("")
        empty = sum(1 for ids in tokens.ids if not ids or ids == [empty_id])
        retriever = bm25s.BM25(k1=self.config.k1, b=self.config.b, method="lucene")
        retriever.index(tokens, show_progress=False)
        index_dir.mkdir(parents=True)
        retriever.save(str(index_dir))
        tokenizer.save_vocab(str(index_dir))
        frame.select(pl.col("id").alias("doc_id")).write_parquet(index_dir / "doc_ids.parquet")
        log(f"bm25s: {len(tokenizer.get_vocab_dict())} terms")
        return {"documents": frame.height, "empty": empty}

    def _search(self, index: IndexHandle, queries: pl.DataFrame, k: int, log: Log) -> pl.DataFrame:
        import bm25s
        import numpy as np

        folder = Path(index.location)
        retriever = bm25s.BM25.load(str(folder), mmap=True)
        tokenizer = self._tokenizer()
        tokenizer.load_vocab(str(folder))
        doc_ids = pl.read_parquet(folder / "doc_ids.parquet")["doc_id"].to_numpy()
        texts = queries["text"].to_list()
        ids = tokenizer.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
        # A query without a known term comes back as the "" token, which would match empty documents.
        empty_id = tokenizer.get_vocab_dict().get("")
        ids = [[t for t in q if t != empty_id] for q in ids]
        keep = [i for i, q in enumerate(ids) if q]
        if not keep:
            return pl.DataFrame(schema=HITS_SCHEMA)
        k_eff = min(k, len(doc_ids))
        docs, scores = retriever.retrieve(
            [ids[i] for i in keep],
            k=k_eff,
            show_progress=False,
            n_threads=self.config.threads if self.config.threads > 1 else 0,
        )
        qids = queries["query_id"].to_numpy()[keep]
        hits = pl.DataFrame(
            {
                "query_id": np.repeat(qids, k_eff),
                "doc_id": doc_ids[docs.reshape(-1)],
                "rank": np.tile(np.arange(1, k_eff + 1, dtype=np.int32), len(keep)),
                "score": scores.reshape(-1).astype(np.float64),
            },
            schema=HITS_SCHEMA,
        )
        hits = hits.filter(pl.col("score") > 0)  # bm25s pads with non-matching documents
        log(f"bm25s: {hits.height} hits for {len(keep)} queries (k={k})")
        return hits


class LuceneEngineBefore(LuceneEngine):
    """main's Lucene engine: chunks of 50,000 queries whatever the number of hits."""

    def search(
        self,
        index: IndexHandle,
        queries: pl.DataFrame,
        k: int,
        log: Log = _nolog,
        chunk_queries: int = SEARCH_CHUNK_QUERIES,
    ) -> pl.DataFrame:
        """BM25 top-k hits (`HITS_SCHEMA`) for `queries` (`query_id, text`).

        More than `chunk_queries` queries (MS MARCO's 503k training queries: 41 minutes with one Lucene
        thread) are searched in chunks, with a progress message (percentage, rate, time left) after each;
        a chunk costs the engine's fixed start (about 7 s for a JVM), so the chunks are large.
        """
        if queries.height <= chunk_queries:
            return self._search(index, queries, k, log)
        progress = Progress(f"{self.backend} search", queries.height, log, unit="queries", every_seconds=0)
        parts = []
        for start in range(0, queries.height, chunk_queries):
            chunk = queries.slice(start, chunk_queries)
            parts.append(self._search(index, chunk, k, _nolog))
            progress.update(chunk.height)
        hits = pl.concat(parts)
        log(f"{self.backend}: {hits.height} hits for {queries.height} queries (k={k}) in {len(parts)} chunks")
        return hits


Bm25sEngineBefore.search = LuceneEngineBefore.search  # main's chunking for both engines


def make_engine(config: BM25Config):
    return Bm25sEngineBefore(config) if config.backend == "bm25s" else LuceneEngineBefore(config)


# -------------------------------------------------------------------------------- lib.cross_encoder


def tokenizing_scorer(max_length: int, batch_size: int):
    """`scale_after.tokenizing_scorer` with main's `CrossEncoderScorer.score` (tokenises every pair at once)."""
    scorer = scale_after.tokenizing_scorer(max_length, batch_size)

    class Before(type(scorer)):
        def score(
            self, queries: Sequence[str], passages: Sequence[str], progress: Callable[[int], None] | None = None
        ) -> np.ndarray:
            """Probabilities of relevance, in input order.

            Args:
                queries: One query per pair.
                passages: One passage per pair.
                progress: Called with the number of pairs done after each batch.

            Returns:
                float64 array of sigmoid(logit), shape (n,).
            """
            if len(queries) != len(passages):
                raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
            n = len(queries)
            if n == 0:
                return np.zeros(0, dtype=np.float64)
            encoded = self._encode(queries, passages)
            lengths = np.fromiter((len(ids) for ids, _ in encoded), dtype=np.int64, count=n)
            order = np.argsort(-lengths, kind="stable")  # longest first: the slowest batch shows up early
            logits = np.empty(n, dtype=np.float64)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                width = int(lengths[idx].max())
                input_ids = np.zeros((len(idx), width), dtype=np.int64)
                type_ids = np.zeros((len(idx), width), dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, i in enumerate(idx):
                    ids, types = encoded[i]
                    input_ids[row, : len(ids)] = ids
                    type_ids[row, : len(types)] = types
                    mask[row, : len(ids)] = 1
                logits[idx] = self._logits(input_ids, mask, type_ids).reshape(-1)
                if progress is not None:
                    progress(len(idx))
            return sigmoid(logits)

    scorer.__class__ = Before
    return scorer


# ----------------------------------------------------------------------------------- asset bodies


def _training_queries(pairs):
    return pairs.select("query_id", pl.col("query").alias("text")).unique("query_id", maintain_order=True)


def bm25_negatives(engine, handle, pairs, qrels, corpus_path: Path, target: Path, k: int, mark) -> dict:
    """main's `bm25_negatives` asset body: every hit of every query in one frame."""
    from hnr_assets.lib.runtime.io import atomic_dir

    window = RankWindow(1, k)
    queries = _training_queries(pairs)
    hits = engine.search(handle, queries, window.last)
    mark("search")
    positives = query_positives(qrels, corpus_path)
    annotated = annotate_hits(hits, positives, corpus_path)
    negatives, stats = select_bm25_negatives(pairs, annotated, window=window, strategy="top", seed=0)
    mark("mine")
    with atomic_dir(target) as tmp:
        negatives.write_parquet(tmp / "negatives.parquet", compression="zstd")
        stats.write_parquet(tmp / "stats.parquet", compression="zstd")
        bm25_ranks(negatives, annotated).write_parquet(tmp / "retrieval_ranks.parquet", compression="zstd")
    excluded = annotated.filter(pl.col("rank") <= window.last)
    int(excluded["positive_id"].sum()), int((excluded["positive_text"] & ~excluded["positive_id"]).sum())
    mark("write")
    return {"hits": hits.height}


def ce_negatives(engine, handle, pairs, qrels, corpus_path: Path, target: Path, k: int, scorer, mark) -> dict:
    """main's `ce_negatives` asset body: every candidate of every query in one frame, scored at once."""
    from hnr_assets.lib.runtime.io import atomic_dir

    queries = _training_queries(pairs)
    hits = engine.search(handle, queries, k)
    mark("search")
    positives = query_positives(qrels, corpus_path)
    candidates = ce_candidates(annotate_hits(hits, positives, corpus_path), k)
    candidates = candidates.join(queries.rename({"text": "query"}), on="query_id", how="left")
    mark("assemble")
    cand_scores = scorer.score(candidates["query"].to_list(), candidates["text"].to_list())
    pos_scores = scorer.score(pairs["query"].to_list(), pairs["positive"].to_list())
    mark("score")
    negatives, stats = select_ce_negatives(
        pairs, candidates, cand_scores, pos_scores, relative_margin=0.05, absolute_margin=None
    )
    stats = short_reason_ce(stats)
    mark("select")
    with atomic_dir(target) as tmp:
        negatives.write_parquet(tmp / "negatives.parquet", compression="zstd")
        stats.write_parquet(tmp / "stats.parquet", compression="zstd")
    mark("write")
    return {"candidates": candidates.height}
