"""Scores of one system on one dataset: the stored layout, scoring a run, dense evaluation end to end.

Layout of a score folder (`scores/<system>/<dataset>/`, and `bm25_scores/<dataset>/` for BM25):

- `run.parquet`: `query_id`, `doc_id`, `score`, `rank` (1 = best), at most `top_k` hits per query;
- `per_query.parquet`: `query_id` and one column per metric (`ndcg@10`, `recall@100`, `mrr@10`,
  `map@100`), one row per judged query (a query without hits scores 0);
- `metrics.json`: the mean of each metric over the judged queries, plus counts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from hnr_assets.lib.data.beir import load_qrels
from hnr_assets.lib.data.pairs import passage_expr
from hnr_assets.lib.evaluation.metrics import DEFAULT_METRICS, evaluate_run
from hnr_assets.lib.retrieval import dense
from hnr_assets.lib.runtime.errors import DataValidationError
from hnr_assets.lib.runtime.io import atomic_dir
from hnr_assets.lib.runtime.progress import Progress
from hnr_assets.lib.runtime.rates import RateProbe

METRICS = DEFAULT_METRICS
PRIMARY_METRIC = "ndcg@10"
SCORE_FILES = ("run.parquet", "per_query.parquet", "metrics.json")


def run_to_dict(run: pl.DataFrame) -> dict[str, dict[str, float]]:
    """A run frame as BEIR's `{qid: {doc_id: score}}`."""
    out: dict[str, dict[str, float]] = {}
    for qid, doc_id, score in run.select("query_id", "doc_id", "score").iter_rows():
        out.setdefault(qid, {})[doc_id] = float(score)
    return out


def score_run(run: pl.DataFrame, qrels: Mapping[str, Mapping[str, int]]) -> tuple[pl.DataFrame, dict[str, float]]:
    """Metrics of a run against qrels, per judged query and averaged (`lib.evaluation.metrics.evaluate_run`).

    Returns:
        `per_query` (query_id + one Float64 column per metric, sorted by query id) and the means.
    """
    means, per_query = evaluate_run(qrels, run_to_dict(run), METRICS)
    qids = sorted(per_query)
    frame = pl.DataFrame(
        {"query_id": qids, **{m: [per_query[q][m] for q in qids] for m in METRICS}},
        schema={"query_id": pl.String, **dict.fromkeys(METRICS, pl.Float64)},
    )
    return frame, means


def write_scores(target: Path, run: pl.DataFrame, per_query: pl.DataFrame, metrics: Mapping[str, Any]) -> Path:
    """Write a score folder atomically (the three files appear together or not at all)."""
    with atomic_dir(Path(target)) as tmp:
        run.write_parquet(tmp / "run.parquet", compression="zstd")
        per_query.write_parquet(tmp / "per_query.parquet", compression="zstd")
        (tmp / "metrics.json").write_text(json.dumps(dict(metrics), indent=2), encoding="utf-8")
    return Path(target)


def read_metrics(folder: Path) -> dict[str, Any]:
    """`metrics.json` of a score folder.

    Raises:
        DataValidationError: Missing, not JSON, or without a numeric value for every metric.
    """
    path = Path(folder) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataValidationError(path, f"cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DataValidationError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    if not isinstance(data, dict):
        raise DataValidationError(path, "not a JSON object")
    missing = [m for m in METRICS if not isinstance(data.get(m), int | float) or isinstance(data.get(m), bool)]
    if missing:
        raise DataValidationError(path, f"no numeric value for {', '.join(missing)}")
    return data


def read_per_query(folder: Path) -> pl.DataFrame:
    """`per_query.parquet` of a score folder, checked for its columns."""
    path = Path(folder) / "per_query.parquet"
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DataValidationError(path, f"cannot read: {exc}") from None
    missing = [c for c in ("query_id", *METRICS) if c not in frame.columns]
    if missing:
        raise DataValidationError(path, f"missing columns {', '.join(missing)}")
    return frame.select("query_id", *(pl.col(m).cast(pl.Float64) for m in METRICS))


def read_run(path: Path) -> pl.DataFrame:
    """A stored run, checked for its columns and cast to the shared types."""
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DataValidationError(path, f"cannot read: {exc}") from None
    missing = [c for c in ("query_id", "doc_id", "score", "rank") if c not in frame.columns]
    if missing:
        raise DataValidationError(path, f"missing columns {', '.join(missing)}")
    return frame.select(
        pl.col("query_id").cast(pl.String),
        pl.col("doc_id").cast(pl.String),
        pl.col("score").cast(pl.Float32),
        pl.col("rank").cast(pl.Int32),
    )


def validate_run(run: pl.DataFrame, top_k: int, judged: set[str] | None = None) -> list[str]:
    """Contract problems of a run (empty list: none).

    Checks: no null or non-finite value; at most `top_k` hits per query; no document twice for a
    query; ranks 1..n in score order; when `judged` is given, no query outside it.
    """
    problems = []
    nulls = {c: n for c, n in zip(run.columns, run.null_count().row(0), strict=True) if n}
    if nulls:
        problems.append(f"null values: {nulls}")
    if run.height and not run["score"].is_finite().all():
        problems.append("non-finite scores")
    per_query = run.group_by("query_id").agg(
        pl.len().alias("n"),
        pl.col("doc_id").n_unique().alias("distinct"),
        (pl.col("rank").sort() == pl.int_range(1, pl.len() + 1)).all().alias("ranks_ok"),
        (pl.col("score").sort_by("rank").diff().fill_null(0) <= 1e-6).all().alias("ordered"),
    )
    too_many = per_query.filter(pl.col("n") > top_k)
    if too_many.height:
        problems.append(f"{too_many.height} queries have more than {top_k} hits")
    dups = per_query.filter(pl.col("distinct") < pl.col("n"))
    if dups.height:
        problems.append(f"{dups.height} queries list a document twice (e.g. {dups['query_id'][0]!r})")
    bad_ranks = per_query.filter(~pl.col("ranks_ok"))
    if bad_ranks.height:
        problems.append(f"{bad_ranks.height} queries have ranks that are not 1..n (e.g. {bad_ranks['query_id'][0]!r})")
    unordered = per_query.filter(~pl.col("ordered"))
    if unordered.height:
        problems.append(f"{unordered.height} queries have scores that rise with rank")
    if judged is not None:
        extra = set(per_query["query_id"].to_list()) - judged
        if extra:
            problems.append(f"{len(extra)} queries are not judged (e.g. {sorted(extra)[0]!r})")
    return problems


def metrics_out_of_range(per_query: pl.DataFrame, metrics: Mapping[str, Any]) -> list[str]:
    """Every metric value, per query and mean, must be a number in [0, 1]; the problems otherwise."""
    problems = []
    for m in METRICS:
        value = metrics.get(m)
        if not isinstance(value, int | float) or math.isnan(value) or not 0.0 <= value <= 1.0:
            problems.append(f"mean {m} = {value!r} is not in [0, 1]")
        col = per_query[m]
        bad = per_query.filter(col.is_null() | col.is_nan() | (col < 0) | (col > 1))
        if bad.height:
            problems.append(f"{bad.height} per-query {m} values outside [0, 1] (e.g. query {bad['query_id'][0]!r})")
    return problems


@dataclass
class Evaluation:
    """The outcome of evaluating one system on one dataset.

    Attributes:
        run: Top-k hits per judged query.
        per_query: Metrics per judged query.
        metrics: Means of the metrics, plus counts and timings (what `metrics.json` holds).
        stats: Timings and cache details for reports.
        dense: For a dense evaluation, what `probe_dense` measures on: the `EmbeddingSource`, the passages,
            the query and corpus matrices and their ids (not written anywhere).
    """

    run: pl.DataFrame
    per_query: pl.DataFrame
    metrics: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    dense: dict[str, Any] | None = field(default=None, repr=False)


def rescore_folder(source: Path, qrels: Mapping[str, Mapping[str, int]], top_k: int) -> Evaluation:
    """Re-score a stored run (e.g. `bm25_scores/<dataset>/`) with this module's metric code.

    The run is kept as it is; `stats["source_metrics_max_abs_diff"]` is the largest difference between
    the source's own `metrics.json` and the re-score (0 when both stages agree).
    """
    source = Path(source)
    run = read_run(source / "run.parquet")
    per_query, means = score_run(run, qrels)
    theirs = read_metrics(source)
    gap = max(abs(float(theirs[m]) - means[m]) for m in METRICS)
    metrics = {
        **means,
        "queries": per_query.height,
        "queries_with_hits": run["query_id"].n_unique(),
        "run_rows": run.height,
        "top_k": top_k,
        "source": str(source),
    }
    return Evaluation(run, per_query, metrics, {"source_metrics_max_abs_diff": round(gap, 6)})


# -------------------------------------------------------------------------------- dense evaluation


def load_passages(corpus_path: Path) -> tuple[list[str], list[str]]:
    """Doc ids and passage texts (`title + " " + text`) of a stored corpus, in file order."""
    corpus = pl.read_parquet(corpus_path, columns=["doc_id", "title", "text"])
    frame = corpus.select("doc_id", passage_expr().alias("passage"))
    return frame["doc_id"].to_list(), frame["passage"].to_list()


def evaluate_dense(
    model_dir: Path,
    dataset_dir: Path,
    dataset: str,
    options: dense.EncodeOptions,
    *,
    top_k: int = 1000,
    cache: dense.EmbeddingCache | None = None,
    log: Callable[[str], None] | None = None,
    progress_every_seconds: float = 30.0,
) -> Evaluation:
    """Encode a stored dataset with a sentence-transformers encoder, search exactly, score.

    Args:
        model_dir: A sentence-transformers folder.
        dataset_dir: A stored dataset (`corpus.parquet`, `queries.parquet`, `qrels.parquet`).
        dataset: Dataset name (cache key, messages).
        options: `lib.retrieval.dense.EncodeOptions`.
        top_k: Hits kept per query.
        cache: `lib.retrieval.dense.EmbeddingCache` for the corpus and query matrices, or None.
        log: Where progress messages go.
        progress_every_seconds: Minimum time between two progress messages.

    Returns:
        The run, per-query metrics, means with counts, and timings.
    """
    log = log or (lambda _msg: None)
    started = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    qrels = load_qrels(dataset_dir / "qrels.parquet")
    queries = pl.read_parquet(dataset_dir / "queries.parquet", columns=["query_id", "text"])
    queries = queries.filter(pl.col("query_id").is_in(list(qrels)))
    doc_ids, passages = load_passages(dataset_dir / "corpus.parquet")

    source = dense.EmbeddingSource(model_dir, options, cache)
    opts = source.options
    log(
        f"{dataset}: {len(passages)} passages, {queries.height} judged queries; model {source.fingerprint} "
        f"on {opts.device} ({opts.precision}, max {opts.max_length} tokens)"
    )
    query_ids = queries["query_id"].to_list()
    query_emb = source.embed(dataset, "queries", query_ids, queries["text"].to_list())
    progress = Progress(f"{dataset}: encoding corpus", len(passages), log, "passages", progress_every_seconds)
    corpus = source.embed(dataset, "corpus", doc_ids, passages, progress.update)
    log(
        f"{dataset}: corpus embeddings "
        + ("read from the cache" if corpus.cache_hit else f"encoded in {corpus.seconds:.1f} s")
    )
    t0 = time.perf_counter()
    run = dense.exact_search(query_emb.matrix, corpus.matrix, query_ids, doc_ids, top_k)
    search_seconds = time.perf_counter() - t0
    per_query, means = score_run(run, qrels)
    total = time.perf_counter() - started
    metrics = {
        **means,
        "queries": per_query.height,
        "queries_with_hits": run["query_id"].n_unique(),
        "documents": len(doc_ids),
        "run_rows": run.height,
        "top_k": top_k,
    }
    stats = {
        "model_fingerprint": source.fingerprint,
        "cache_key": corpus.key.digest,
        "cache_hit": corpus.cache_hit,
        "query_cache_hit": query_emb.cache_hit,
        "model_loaded": source.loaded,
        "device": opts.device,
        "precision": opts.precision,
        "max_length": opts.max_length,
        "batch_size": opts.batch_size,
        "load_seconds": round(source.load_seconds, 2),
        "query_encode_seconds": round(query_emb.seconds, 2),
        "corpus_seconds": round(corpus.seconds, 2),
        "corpus_passages_per_second": (
            round(len(passages) / corpus.seconds, 1) if not corpus.cache_hit and corpus.seconds > 0 else None
        ),
        "search_seconds": round(search_seconds, 2),
        "total_seconds": round(total, 2),
    }
    inputs = {"source": source, "passages": passages, "query_emb": query_emb.matrix, "doc_emb": corpus.matrix}
    inputs.update(query_ids=query_ids, doc_ids=doc_ids, top_k=top_k)
    return Evaluation(run=run, per_query=per_query, metrics=metrics, stats=stats, dense=inputs)


def probe_dense(evaluation: Evaluation, passages: int, queries: int, seed: int = 0) -> list[RateProbe]:
    """The rate probes of a dense evaluation, on its own data (`lib.retrieval.dense.probe_encoding`,
    `probe_search`): encoding a sample of the corpus, and searching the real embeddings for a sample of
    the queries. Loads the encoder when the evaluation read every embedding from the cache.

    Args:
        evaluation: The outcome of `evaluate_dense`.
        passages: Corpus passages in the encoding sample.
        queries: Queries in the search sample.
        seed: Seed of both samples.
    """
    d = evaluation.dense
    if d is None:
        raise ValueError("probe_dense needs the outcome of evaluate_dense (a dense system)")
    return [
        dense.probe_encoding(d["source"].encoder, d["passages"], passages, seed),
        dense.probe_search(d["query_emb"], d["doc_emb"], d["query_ids"], d["doc_ids"], d["top_k"], queries, seed),
    ]
