"""Assets `scores` (partition = system × dataset) and `results` (the study's table, plots, significance).

Systems are the two baselines (`bm25-retrieval`, `base-encoder`) and every recipe's encoder. The
dependencies, and why they are mapped as they are:

- `datasets`: the `dataset` dimension maps one-to-one (`MultiToSingleDimensionPartitionMapping`).
- `bm25_scores` (per dataset): read by the `bm25-retrieval` system only, mapped on the `dataset`
  dimension like `datasets` (Dagster cannot restrict a dependency to some keys of the other dimension).
- `base_encoder` (unpartitioned): read by `base-encoder`; recipes descend from it through `encoders`.
- `encoders` (per recipe): the `system` dimension holds the recipe keys plus two baselines, so it is not
  the recipe partitions definition and `MultiToSingleDimensionPartitionMapping` cannot express "system
  key = recipe key, baselines map to nothing"; custom `PartitionMapping` classes are deprecated and
  ignored by the webserver and declarative automation. The dependency is therefore on all recipe
  partitions (`AllPartitionMapping`): lineage is right per asset, staleness is over-approximated per
  partition, and each materialization records the exact encoder it read (content hash, model version).
"""

import json
import time
import warnings
from pathlib import Path

import dagster as dg
import polars as pl

from hnr_assets.defs import versions
from hnr_assets.defs.checks import contract_spec, problems_result, quality_spec
from hnr_assets.defs.execution import each_partition, run_policy
from hnr_assets.defs.partitions import recipes, system_dataset_partitions, system_keys
from hnr_assets.lib.beir import load_qrels
from hnr_assets.lib.dense import EmbeddingCache, EncodeOptions
from hnr_assets.lib.errors import DataValidationError, HnrError
from hnr_assets.lib.report import md_table
from hnr_assets.lib.scores import (
    METRICS,
    evaluate_dense,
    metrics_out_of_range,
    read_metrics,
    read_per_query,
    read_run,
    rescore_folder,
    validate_run,
    write_scores,
)
from hnr_assets.profiles.schema import Profile
from hnr_assets.resources.mlflow import MlflowResource, TrackedRun
from hnr_assets.resources.storage import StorageResource

SAMPLE_QUERIES = 3
SAMPLE_HITS = 3
TRAINING_KEYS = ("registered_model", "model_version", "best_step", "base_model")


def _mlflow_name(text: str) -> str:
    """A metric-name-safe version of a dataset or metric name (`ndcg@10` -> `ndcg_at_10`)."""
    text = text.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise HnrError(f"{path} is missing: materialize {what} first")
    return path


def _read_training_json(path: Path) -> dict:
    try:
        data = json.loads(_require(path, "the `encoders` partition").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataValidationError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    if not isinstance(data, dict) or not data.get("mlflow_run_id"):
        raise DataValidationError(path, "no `mlflow_run_id` (the encoder's MLflow run)")
    return data


def _sample_hits(run: pl.DataFrame, qrels_path: Path, queries_path: Path) -> str:
    qrels = pl.read_parquet(qrels_path)
    queries = pl.read_parquet(queries_path, columns=["query_id", "text"]).rename({"text": "query"})
    first = run.select("query_id").unique(maintain_order=True).head(SAMPLE_QUERIES)
    sample = (
        run.join(first, on="query_id")
        .filter(pl.col("rank") <= SAMPLE_HITS)
        .join(queries, on="query_id", how="left")
        .join(qrels.select("query_id", "doc_id", "grade"), on=["query_id", "doc_id"], how="left")
        .select("query_id", "query", "rank", "doc_id", pl.col("score").round(4), pl.col("grade").fill_null(0))
    )
    return md_table(sample.iter_rows(), sample.columns, max_chars=80)


def build_defs(profile: Profile) -> dg.Definitions:
    """The evaluation stage of `profile`."""
    settings = profile.evaluation
    partitions = system_dataset_partitions(profile)
    systems = system_keys(profile)
    recipe_keys = [r.key for r in recipes(profile)]
    with warnings.catch_warnings():  # beta in Dagster 1.13, and what Dagster itself infers here
        warnings.simplefilter("ignore", dg.BetaWarning)
        on_dataset = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")

    @dg.asset(
        name="scores",
        group_name="evaluation",
        partitions_def=partitions,
        deps=[
            dg.AssetDep("datasets", partition_mapping=on_dataset),
            dg.AssetDep("bm25_scores", partition_mapping=on_dataset),
            dg.AssetDep("base_encoder"),
            dg.AssetDep("encoders", partition_mapping=dg.AllPartitionMapping()),
        ],
        kinds={"pytorch", "parquet", "mlflow"},
        code_version=versions.code_version(profile, "scores"),
        **run_policy("scores"),
        check_specs=[
            contract_spec(
                "scores",
                "contract",
                "run.parquet has at most top_k distinct hits per judged query, ranked by score; "
                "per_query.parquet has every judged query.",
            ),
            contract_spec("scores", "metrics_in_range", "Every metric, per query and mean, is a number in [0, 1]."),
        ],
        description=(
            "Retrieval scores of one system on one dataset (partition = system × dataset): run.parquet "
            f"(top {settings.top_k}), per_query.parquet and metrics.json (nDCG@10, Recall@100, MRR@10, "
            "MAP@100; BEIR's rules). Dense systems: exact search over normalised embeddings, corpus "
            "embeddings cached per (model content, corpus content, max length, precision). BM25 retrieval "
            "is re-scored from `bm25_scores`. Each score is logged to the encoder's MLflow run."
        ),
    )
    def scores(
        context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        return each_partition(context, lambda key: one_score(context, key, storage, mlflow))

    def one_score(context, key: dg.MultiPartitionKey, storage: StorageResource, mlflow: MlflowResource):
        keys = key.keys_by_dimension
        system, dataset = keys["system"], keys["dataset"]
        started = time.perf_counter()
        dataset_dir = storage.asset_dir("datasets", dataset)
        qrels = load_qrels(_require(dataset_dir / "qrels.parquet", f"`datasets` [{dataset}]"))
        extra: dict[str, object] = {}
        training: dict | None = None

        if system == "bm25-retrieval":
            source = storage.asset_dir("bm25_scores", dataset)
            _require(source / "run.parquet", f"`bm25_scores` [{dataset}]")
            outcome = rescore_folder(source, qrels, settings.top_k)
            gap = outcome.stats["source_metrics_max_abs_diff"]
            if gap > 1e-6:
                context.log.warning(f"{source}/metrics.json differs from our re-score by up to {gap}")
            extra["source"] = dg.MetadataValue.path(str(source))
        else:
            if system == "base-encoder":
                model_dir = _require(storage.asset_dir("base_encoder", "model"), "`base_encoder`")
            else:
                encoder_dir = storage.asset_dir("encoders", system)
                training = _read_training_json(encoder_dir / "training.json")
                model_dir = _require(encoder_dir / "model", f"`encoders` [{system}]")
                extra.update({f"encoder_{k}": str(training[k]) for k in TRAINING_KEYS if training.get(k) is not None})
            options = EncodeOptions(
                settings.max_length,
                settings.batch_size,
                settings.precision,
                settings.device,
                trust_remote_code=profile.training.base_encoder.trust_remote_code,
            )
            cache = EmbeddingCache(storage.shared_dir("cache", "embeddings")) if settings.cache_embeddings else None
            outcome = evaluate_dense(
                model_dir, dataset_dir, dataset, options, top_k=settings.top_k, cache=cache, log=context.log.info
            )
            outcome.metrics.update({"model_dir": str(model_dir), **outcome.stats})
            extra["model"] = dg.MetadataValue.path(str(model_dir))
        extra.update({k: v for k, v in outcome.stats.items() if v is not None})
        run, per_query, metrics = outcome.run, outcome.per_query, outcome.metrics

        target = storage.asset_dir("scores", system, dataset)
        write_scores(target, run, per_query, metrics)
        contract, in_range = _check_stored(target, qrels, settings.top_k)
        tracked = _log_to_mlflow(mlflow, profile.name, system, dataset, training, target)
        settings_hash = versions.settings_hash(profile, "scores", key)
        tracked.set_tags({f"{versions.MLFLOW_TAG}/scores/{dataset}": settings_hash})  # a run holds every dataset

        return dg.MaterializeResult(
            metadata={
                **{m: round(float(metrics[m]), 4) for m in METRICS},
                "system": system,
                "dataset": dataset,
                "queries": per_query.height,
                "run_rows": run.height,
                **extra,
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target)),
                "sample_hits": dg.MetadataValue.md(
                    _sample_hits(run, dataset_dir / "qrels.parquet", dataset_dir / "queries.parquet")
                ),
                "mlflow_run_id": tracked.run_id,
                "mlflow_run": dg.MetadataValue.url(tracked.url),
                versions.METADATA_KEY: settings_hash,
            },
            check_results=[problems_result("contract", contract), problems_result("metrics_in_range", in_range)],
        )

    @dg.asset(
        name="results",
        group_name="evaluation",
        deps=[dg.AssetDep("scores")],
        kinds={"parquet", "mlflow"},
        code_version=versions.code_version(profile, "results"),
        **run_policy("results"),
        check_specs=[
            quality_spec("results", "complete", "Every system is scored on every dataset."),
            quality_spec(
                "results",
                "reference_scores",
                "Published scores are reproduced within tolerance: "
                + (
                    "; ".join(
                        f"{r.system} on {r.dataset} {r.metric} {r.value}±{r.tolerance}" for r in settings.references
                    )
                    or "none configured"
                ),
            ),
            quality_spec(
                "results",
                "recipes_beat_base_encoder",
                "Every recipe's encoder beats the untrained base encoder on at least half of the datasets.",
            ),
        ],
        description=(
            "The study's table: nDCG@10 of every system on every dataset and the average, paired "
            f"significance against `{settings.significance.baseline}` per dataset, the study's reported "
            "averages beside ours, a heatmap and a bar chart. Files: results.{csv,parquet,md}, "
            "significance.{csv,parquet}, scores_long.{csv,parquet}, heatmap.png, averages.png. Works "
            "with only some `scores` partitions: missing cells are shown as missing."
        ),
    )
    def results(
        context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        import os

        # matplotlib keeps a font cache; under the data root rather than in the user's home.
        os.environ.setdefault("MPLCONFIGDIR", str(storage.shared_dir("cache", "matplotlib")))
        from hnr_assets.lib import plots
        from hnr_assets.lib import results as lib_results
        from hnr_assets.lib.io import atomic_dir

        sig = settings.significance
        table = lib_results.collect(
            systems,
            profile.dataset_names,
            lambda s, d: storage.asset_dir("scores", s, d),
            lib_results.SignificanceSettings(**sig.model_dump()),
        )
        markdown = lib_results.markdown_table(table)
        note = lib_results.significance_note(table)
        missing_md = lib_results.missing_markdown(table)
        target = storage.asset_dir("results")
        with atomic_dir(target) as tmp:
            for name, frame in (("results", table.table), ("significance", table.tests), ("scores_long", table.long)):
                frame.write_parquet(tmp / f"{name}.parquet")
                frame.write_csv(tmp / f"{name}.csv")
            (tmp / "results.md").write_text(
                f"{markdown}\n\n{note}\n\nMissing cells:\n\n{missing_md}\n", encoding="utf-8"
            )
            plots.heatmap(table, tmp / "heatmap.png")
            plots.averages_bar(table, tmp / "averages.png")

        averages = {
            f"average/{_mlflow_name(r['system'])}/ndcg_at_10": r["average"]
            for r in table.table.iter_rows(named=True)
            if r["average"] is not None
        }
        settings_hash = versions.settings_hash(profile, "results")
        tags = {"hnr/role": "results", "hnr/profile": profile.name, versions.MLFLOW_TAG: settings_hash}
        with mlflow.run("results", tags=tags) as tracked:
            tracked.log_params(
                {
                    "systems": ",".join(systems),
                    "datasets": ",".join(profile.dataset_names),
                    "significance_baseline": sig.baseline,
                    "significance_test": sig.test,
                    "correction": sig.correction,
                    "missing_cells": len(table.missing),
                }
            )
            if averages:
                tracked.log_metrics(averages)
            tracked.log_artifact(target, "results")

        complete = [f"{s} on {d}: {why}" for s, d, why in table.missing]
        checks = [
            problems_result("complete", complete, severity=dg.AssetCheckSeverity.WARN, missing=len(complete)),
            problems_result(
                "reference_scores",
                lib_results.reference_problems(table, settings.references),
                severity=dg.AssetCheckSeverity.WARN,
            ),
            problems_result(
                "recipes_beat_base_encoder",
                lib_results.beats_base_problems(table, recipe_keys),
                severity=dg.AssetCheckSeverity.WARN,
            ),
        ]
        scored = len(table.cells) - len(table.missing)
        context.log.info(f"results: {scored} of {len(table.cells)} cells scored")
        return dg.MaterializeResult(
            metadata={
                "table": dg.MetadataValue.md(f"{markdown}\n\n{note}"),
                "cells_scored": scored,
                "cells_missing": len(table.missing),
                "missing": dg.MetadataValue.md(missing_md),
                "heatmap": dg.MetadataValue.md(_image_md(target / "heatmap.png", "nDCG@10 heatmap")),
                "averages": dg.MetadataValue.md(_image_md(target / "averages.png", "average nDCG@10")),
                "heatmap_png": dg.MetadataValue.path(str(target / "heatmap.png")),
                "averages_png": dg.MetadataValue.path(str(target / "averages.png")),
                "results_csv": dg.MetadataValue.path(str(target / "results.csv")),
                "path": dg.MetadataValue.path(str(target)),
                "mlflow_run_id": tracked.run_id,
                "mlflow_run": dg.MetadataValue.url(tracked.url),
                versions.METADATA_KEY: settings_hash,
            },
            check_results=checks,
        )

    return dg.Definitions(assets=[scores, results])


def _check_stored(target: Path, qrels: dict, top_k: int) -> tuple[list[str], list[str]]:
    """Problems of the score folder just written, read back: (contract, metrics_in_range)."""
    stored_pq = read_per_query(target)
    contract = validate_run(read_run(target / "run.parquet"), top_k, judged=set(qrels))
    if set(qrels) != set(stored_pq["query_id"].to_list()) or stored_pq.height != len(qrels):
        contract.append(f"per_query.parquet has {stored_pq.height} rows for {len(qrels)} judged queries")
    return contract, metrics_out_of_range(stored_pq, read_metrics(target))


def _log_to_mlflow(
    mlflow: MlflowResource, profile: str, system: str, dataset: str, training: dict | None, folder: Path
) -> TrackedRun:
    """Log a score folder to the encoder's own run (recipes) or to the system's baseline run.

    Metrics are named by dataset (`eval/<dataset>/ndcg_at_10`, ...), so one run shows an encoder on
    every dataset; `metrics.json` and `per_query.parquet` go under the artifact folder `eval/<dataset>`.
    """
    metrics = read_metrics(folder)
    values = {f"eval/{_mlflow_name(dataset)}/{_mlflow_name(m)}": float(metrics[m]) for m in METRICS}
    values[f"eval/{_mlflow_name(dataset)}/queries"] = float(metrics["queries"])

    def log(tracked: TrackedRun) -> TrackedRun:
        tracked.log_metrics(values)
        for name in ("metrics.json", "per_query.parquet"):
            tracked.log_artifact(folder / name, f"eval/{dataset}")
        return tracked

    if training is not None:
        return log(mlflow.open_run(str(training["mlflow_run_id"])))
    tags = {"hnr/system": system, "hnr/role": "baseline-evaluation", "hnr/profile": profile}
    # Partitions of one baseline on several datasets share its run: find-or-create under a lock, or
    # two partitions started together would each create one.
    with mlflow.exclusive(f"baseline:{system}"):
        found = mlflow.find_run(tags)
        if found:
            return log(mlflow.open_run(found))
        with mlflow.run(f"baseline:{system}", tags=tags) as tracked:
            tracked.log_params({"system": system})
            return log(tracked)


def _image_md(path: Path, alt: str) -> str:
    """A PNG inlined as a Markdown image (the Dagster UI renders data URIs in Markdown metadata)."""
    import base64

    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"
