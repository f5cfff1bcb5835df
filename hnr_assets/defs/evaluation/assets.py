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
from hnr_assets.defs.checks import contract, problems_result, quality
from hnr_assets.defs.execution import each_partition, hnr_asset
from hnr_assets.defs.layout import TRAINING, Layout
from hnr_assets.defs.partitions import recipes, system_keys
from hnr_assets.defs.rates import log_probes, probes_metadata
from hnr_assets.lib.data.beir import load_qrels
from hnr_assets.lib.evaluation.scores import (
    METRICS,
    Evaluation,
    evaluate_dense,
    metrics_out_of_range,
    probe_dense,
    read_metrics,
    read_per_query,
    read_run,
    rescore_folder,
    validate_run,
    write_scores,
)
from hnr_assets.lib.retrieval.dense import EmbeddingCache, EncodeOptions
from hnr_assets.lib.runtime.errors import DataValidationError
from hnr_assets.lib.runtime.rates import RateProbe
from hnr_assets.lib.runtime.report import md_table
from hnr_assets.profiles.schema import Profile
from hnr_assets.resources.mlflow import (
    TAG_PROFILE,
    TAG_ROLE,
    TAG_SETTINGS_HASH,
    TAG_SYSTEM,
    MlflowResource,
    TrackedRun,
)
from hnr_assets.resources.storage import StorageResource

SAMPLE_QUERIES = 3
SAMPLE_HITS = 3
TRAINING_KEYS = ("registered_model", "model_version", "best_step", "base_model")
RESULT_TABLES = ("results", "significance", "scores_long")


def _mlflow_name(text: str) -> str:
    """A metric-name-safe version of a dataset or metric name (`ndcg@10` -> `ndcg_at_10`)."""
    text = text.replace("@", "_at_")
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)


def _read_training_json(layout: Layout, recipe: str, where: str) -> dict:
    path = layout.encoder(recipe, TRAINING).require(where)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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


# ------------------------------------------------------------------------------------------ scores


def _scores_deps() -> list[dg.AssetDep]:
    with warnings.catch_warnings():  # beta in Dagster 1.13, and what Dagster itself infers here
        warnings.simplefilter("ignore", dg.BetaWarning)
        on_dataset = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="dataset")
    return [
        dg.AssetDep("datasets", partition_mapping=on_dataset),
        dg.AssetDep("bm25_scores", partition_mapping=on_dataset),
        dg.AssetDep("base_encoder"),
        dg.AssetDep("encoders", partition_mapping=dg.AllPartitionMapping()),
    ]


def scores_asset(profile: Profile) -> dg.AssetsDefinition:
    """`scores`, partitioned by system × dataset."""
    settings = profile.evaluation

    @hnr_asset(
        "scores",
        profile,
        deps=_scores_deps(),
        kinds={"pytorch", "parquet", "mlflow"},
        checks=[
            contract(
                "run.parquet has at most top_k distinct hits per judged query, ranked by score; "
                "per_query.parquet has every judged query."
            ),
            contract("Every metric, per query and mean, is a number in [0, 1].", "metrics_in_range"),
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
        return each_partition(context, lambda key: one_score(profile, context, key, storage, mlflow))

    return scores


def _rescore_bm25(context, layout: Layout, dataset: str, qrels: dict, top_k: int) -> tuple[Evaluation, dict]:
    """`bm25-retrieval`: the mining stage's BM25 run, scored again with this stage's code."""
    source = layout.folder("bm25_scores", dataset)
    layout.input("bm25_scores", dataset, name="run.parquet").require(f"scores[{dataset}]")
    outcome = rescore_folder(source, qrels, top_k)
    gap = outcome.stats["source_metrics_max_abs_diff"]
    if gap > 1e-6:
        context.log.warning(f"{source}/metrics.json differs from our re-score by up to {gap}")
    return outcome, {"source": dg.MetadataValue.path(str(source))}


def _score_dense(
    profile: Profile, context, layout: Layout, system: str, dataset: str, training: dict | None
) -> tuple[Evaluation, dict]:
    """A dense system (the base encoder or a recipe's encoder): encode, search exactly, score."""
    settings, where = profile.evaluation, f"scores[{system}|{dataset}]"
    model_dir = (layout.base_encoder() if training is None else layout.encoder(system)).require(where)
    extra: dict[str, object] = {}
    if training is not None:
        extra.update({f"encoder_{k}": str(training[k]) for k in TRAINING_KEYS if training.get(k) is not None})
    options = EncodeOptions(
        settings.max_length,
        settings.batch_size,
        settings.precision,
        settings.device,
        trust_remote_code=profile.training.base_encoder.trust_remote_code,
    )
    cache = EmbeddingCache(layout.storage.shared_dir("cache", "embeddings")) if settings.cache_embeddings else None
    outcome = evaluate_dense(
        model_dir,
        layout.folder("datasets", dataset),
        dataset,
        options,
        top_k=settings.top_k,
        cache=cache,
        log=context.log.info,
    )
    outcome.metrics.update({"model_dir": str(model_dir), **outcome.stats})
    extra["model"] = dg.MetadataValue.path(str(model_dir))
    return outcome, extra


def _probes(profile: Profile, outcome: Evaluation) -> list[RateProbe]:
    """After a dense system's scores are written: encoding and search rates against bare sentence-transformers
    and BEIR's exact search on its own data (`lib.evaluation.scores.probe_dense`); none for BM25 or when
    `runtime.rate_probes` is off."""
    settings = profile.runtime.rate_probes
    if not settings.enabled or outcome.dense is None:
        return []
    return probe_dense(outcome, settings.encode_passages, settings.search_queries, settings.seed)


def one_score(
    profile: Profile, context, key: dg.MultiPartitionKey, storage: StorageResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Score one system on one dataset, write the score folder, check it, log it to MLflow."""
    keys = key.keys_by_dimension
    system, dataset = keys["system"], keys["dataset"]
    layout, top_k = Layout(storage), profile.evaluation.top_k
    started = time.perf_counter()
    qrels = load_qrels(layout.dataset(dataset, "qrels").require(f"scores[{system}|{dataset}]"))
    training = None
    if system == "bm25-retrieval":
        outcome, extra = _rescore_bm25(context, layout, dataset, qrels, top_k)
    else:
        if system != "base-encoder":
            training = _read_training_json(layout, system, f"scores[{system}|{dataset}]")
        outcome, extra = _score_dense(profile, context, layout, system, dataset, training)
    extra.update({k: v for k, v in outcome.stats.items() if v is not None})
    run, per_query, metrics = outcome.run, outcome.per_query, outcome.metrics
    target = layout.folder("scores", system, dataset)
    write_scores(target, run, per_query, metrics)
    contract_problems, in_range = _check_stored(target, qrels, top_k)
    probes = _probes(profile, outcome)
    extra.update(probes_metadata(probes))
    tracked = _log_to_mlflow(mlflow, profile.name, system, dataset, training, target)
    # One run holds the system's scores on every dataset: a tag per dataset.
    tracked.set_tags({f"{TAG_SETTINGS_HASH}/scores/{dataset}": versions.settings_hash(profile, "scores", key)})
    log_probes(tracked, probes, prefix=f"eval/{_mlflow_name(dataset)}/")
    dataset_dir = layout.folder("datasets", dataset)
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
        },
        check_results=[
            problems_result("contract", contract_problems),
            problems_result("metrics_in_range", in_range),
        ],
    )


# ------------------------------------------------------------------------------------------ results


def results_asset(profile: Profile) -> dg.AssetsDefinition:
    """`results`: the study's table, its significance tests and plots, from whatever `scores` exist."""
    settings = profile.evaluation
    sig = settings.significance
    references = "; ".join(f"{r.system} on {r.dataset} {r.metric} {r.value}±{r.tolerance}" for r in settings.references)
    in_domain = _in_domain(profile)
    where = (
        f"on {in_domain}, the training pairs' dataset."
        if in_domain
        else "on at least half of the datasets (the training pairs' dataset is not evaluated)."
    )

    @hnr_asset(
        "results",
        profile,
        deps=[dg.AssetDep("scores")],
        kinds={"parquet", "mlflow"},
        checks=[
            quality("complete", "Every system is scored on every dataset."),
            quality(
                "reference_scores",
                "Published scores are reproduced within tolerance: " + (references or "none configured"),
            ),
            quality(
                "recipes_beat_base_encoder",
                f"At least {sig.min_recipes_beating_base} recipes beat the untrained base encoder with a "
                f"{sig.correction}-corrected p < {sig.alpha} {where}",
            ),
        ],
        description=(
            "The study's table: nDCG@10 of every system on every dataset with its bootstrap interval and the "
            "average, paired significance against " + " and ".join(f"`{b}`" for b in sig.baselines) + " per "
            "dataset, the study's question (LLM-written against corpus-mined negatives, relative), the study's "
            "reported averages beside ours, a heatmap, a bar chart and the intervals. Files: "
            "results.{csv,parquet,md}, significance.{csv,parquet}, scores_long.{csv,parquet}, direction.csv, "
            "heatmap.png, averages.png, intervals.png. Works with only some `scores` partitions: missing cells "
            "are shown as missing."
        ),
    )
    def results(
        context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        return build_results(profile, context, storage, mlflow)

    return results


def _in_domain(profile: Profile) -> str | None:
    """The training pairs' dataset when it is also evaluated (where training should help most), else None."""
    name = profile.training_pairs.dataset.name
    return name if name in profile.dataset_names else None


def _report(profile: Profile, table) -> dict[str, str]:
    """The Markdown parts of `results.md` and of the metadata, in order."""
    from hnr_assets.lib.evaluation import results as lib_results

    return {
        "setting": profile.description or profile.name,
        "table": lib_results.markdown_table(table),
        "note": lib_results.significance_note(table),
        "comparisons": lib_results.comparisons_markdown(table),
        "direction": lib_results.direction_markdown(table),
        "missing": lib_results.missing_markdown(table),
    }


def _write_results(table, target: Path, report: dict[str, str]) -> None:
    """The table, the tests and the long scores as Parquet and CSV, `results.md`, the plots; atomically."""
    from hnr_assets.lib.evaluation import plots
    from hnr_assets.lib.evaluation import results as lib_results
    from hnr_assets.lib.runtime.io import atomic_dir

    with atomic_dir(target) as tmp:
        for name, frame in zip(RESULT_TABLES, (table.table, table.tests, table.long), strict=True):
            frame.write_parquet(tmp / f"{name}.parquet")
            frame.write_csv(tmp / f"{name}.csv")
        pl.DataFrame(lib_results.direction_rows(table)).write_csv(tmp / "direction.csv")
        (tmp / "results.md").write_text(
            f"Setting: {report['setting']}\n\n{report['table']}\n\n{report['note']}\n\n"
            f"Paired comparisons:\n\n{report['comparisons']}\n\n"
            f"LLM-written against corpus-mined negatives:\n\n{report['direction']}\n\n"
            f"Missing cells:\n\n{report['missing']}\n",
            encoding="utf-8",
        )
        plots.heatmap(table, tmp / "heatmap.png")
        plots.averages_bar(table, tmp / "averages.png")
        plots.intervals(table, tmp / "intervals.png")


def _log_results(mlflow: MlflowResource, profile: Profile, systems: list[str], table, target: Path) -> TrackedRun:
    sig = profile.evaluation.significance
    averages = {
        f"average/{_mlflow_name(r['system'])}/ndcg_at_10": r["average"]
        for r in table.table.iter_rows(named=True)
        if r["average"] is not None
    }
    tags = {
        TAG_ROLE: "results",
        TAG_PROFILE: profile.name,
        TAG_SETTINGS_HASH: versions.settings_hash(profile, "results"),
    }
    with mlflow.run("results", tags=tags) as tracked:
        tracked.log_params(
            {
                "systems": ",".join(systems),
                "datasets": ",".join(profile.dataset_names),
                "significance_baselines": ",".join(sig.baselines),
                "significance_test": sig.test,
                "correction": sig.correction,
                "missing_cells": len(table.missing),
            }
        )
        if averages:
            tracked.log_metrics(averages)
        tracked.log_artifact(target, "results")
    return tracked


def build_results(profile: Profile, context, storage: StorageResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """The body of `results`."""
    import os

    # matplotlib keeps a font cache; under the data root rather than in the user's home.
    os.environ.setdefault("MPLCONFIGDIR", str(storage.shared_dir("cache", "matplotlib")))
    from hnr_assets.lib.evaluation import results as lib_results

    settings, systems, layout = profile.evaluation, system_keys(profile), Layout(storage)
    sig = settings.significance
    table = lib_results.collect(
        systems,
        profile.dataset_names,
        lambda s, d: layout.folder("scores", s, d),
        lib_results.SignificanceSettings(**sig.model_dump(exclude={"min_recipes_beating_base"})),
    )
    report = _report(profile, table)
    target = layout.folder("results")
    _write_results(table, target, report)
    tracked = _log_results(mlflow, profile, systems, table, target)
    complete = [f"{s} on {d}: {why}" for s, d, why in table.missing]
    warn, recipe_keys, in_domain = dg.AssetCheckSeverity.WARN, [r.key for r in recipes(profile)], _in_domain(profile)
    wins = lib_results.beats_base_outcomes(table, recipe_keys, dataset=in_domain)
    checks = [
        problems_result("complete", complete, severity=warn, missing=len(complete)),
        problems_result("reference_scores", lib_results.reference_problems(table, settings.references), severity=warn),
        problems_result(
            "recipes_beat_base_encoder",
            lib_results.beats_base_problems(
                table, recipe_keys, dataset=in_domain, min_recipes=sig.min_recipes_beating_base
            ),
            severity=warn,
            **{f"significant_wins/{r}": n for r, (n, _) in wins.items()},
        ),
    ]
    scored = len(table.cells) - len(table.missing)
    context.log.info(f"results: {scored} of {len(table.cells)} cells scored")
    return dg.MaterializeResult(
        metadata={
            "setting": report["setting"],
            "table": dg.MetadataValue.md(f"{report['table']}\n\n{report['note']}"),
            "comparisons": dg.MetadataValue.md(report["comparisons"]),
            "llm_vs_corpus": dg.MetadataValue.md(report["direction"]),
            "cells_scored": scored,
            "cells_missing": len(table.missing),
            "missing": dg.MetadataValue.md(report["missing"]),
            "heatmap": dg.MetadataValue.md(_image_md(target / "heatmap.png", "nDCG@10 heatmap")),
            "averages": dg.MetadataValue.md(_image_md(target / "averages.png", "average nDCG@10")),
            "intervals": dg.MetadataValue.md(_image_md(target / "intervals.png", "nDCG@10 with intervals")),
            "heatmap_png": dg.MetadataValue.path(str(target / "heatmap.png")),
            "averages_png": dg.MetadataValue.path(str(target / "averages.png")),
            "results_csv": dg.MetadataValue.path(str(target / "results.csv")),
            "path": dg.MetadataValue.path(str(target)),
            "mlflow_run_id": tracked.run_id,
            "mlflow_run": dg.MetadataValue.url(tracked.url),
        },
        check_results=checks,
    )


def build_defs(profile: Profile) -> dg.Definitions:
    """The evaluation stage of `profile`: one factory per asset."""
    return dg.Definitions(assets=[scores_asset(profile), results_asset(profile)])


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
    tags = {TAG_SYSTEM: system, TAG_ROLE: "baseline-evaluation", TAG_PROFILE: profile}
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
