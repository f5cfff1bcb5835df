"""Assets `llm_negatives_ce_scores` (per generator), `training_sets` and `encoders` (per recipe), `base_encoder`.

Files (under `<data root>/<profile>/`):
- `llm_negatives_ce_scores/<generator>/scores.parquet`: cross-encoder probability of every LLM negative
  and of its pair's positive (`lib.training_sets.CE_SCORES_SCHEMA`), with `manifest.json` (the sha256 of
  the negative file scored, so stale scores are refused).
- `training_sets/<recipe>/training_set.parquet` (`lib.training_sets.training_set_schema`),
  `split.parquet` (query_id, split) and `manifest.json` (sources, settings, content hashes).
- `base_encoder/model/` (sentence-transformers folder) and `base_encoder/base_encoder.json`.
- `encoders/<recipe>/model/` (sentence-transformers folder), `training.json`, `history.json`.

Negative sets are read by path from the folders their assets write (`bm25_negatives/negatives.parquet`,
`ce_negatives/negatives.parquet`, `llm_negatives/<g>/negatives.parquet`); the dependencies are declared
so that lineage and staleness are right. `llm_negatives` is partitioned by generator, recipes are not:
with `same_queries` on (the default) every recipe reads every generator's set (the common query set
depends on all of them), so the mapping is all-partitions; with it off, a recipe depends on exactly its
own generators (a static mapping generator -> recipes).
"""

import json
import os
import shutil
import socket
import time
from pathlib import Path

import dagster as dg
import polars as pl

from hnr_assets.defs import versions
from hnr_assets.defs.checks import contract_spec, problems_result, quality_spec
from hnr_assets.defs.execution import each_partition, run_policy
from hnr_assets.defs.partitions import generator_partitions, recipe_partitions, recipes
from hnr_assets.defs.training.config import config_class, merge
from hnr_assets.lib.errors import ConfigError, DataValidationError
from hnr_assets.lib.io import atomic_dir, file_sha256, frame_fingerprint, pid_alive
from hnr_assets.lib.negatives import NEGATIVES_SCHEMA
from hnr_assets.lib.progress import Progress
from hnr_assets.lib.recipes import Recipe, llm_source
from hnr_assets.lib.report import md_table
from hnr_assets.lib.training_sets import (
    CE_SCORES_SCHEMA,
    apply_ce_filter,
    assemble_training_set,
    common_pairs,
    validate_training_set,
)
from hnr_assets.profiles.schema import Profile
from hnr_assets.resources.cross_encoder import CrossEncoderResource
from hnr_assets.resources.mlflow import MlflowResource
from hnr_assets.resources.storage import StorageResource

NEGATIVES_FILE = "negatives.parquet"
SCORES_FILE = "scores.parquet"
TRAINING_SET_FILE = "training_set.parquet"
SPLIT_FILE = "split.parquet"
SAMPLE_ROWS = 3
REQUIRED_TRAINING_KEYS = (
    "recipe",
    "mlflow_run_id",
    "registered_model",
    "model_version",
    "best_step",
    "best_validation_score",
    "base_model",
)


# ------------------------------------------------------------------------------------------ helpers


def negatives_path(storage: StorageResource, source: str) -> Path:
    """Where the asset that produces a negative set writes it."""
    if source == "bm25":
        return storage.asset_dir("bm25_negatives") / NEGATIVES_FILE
    if source == "ce":
        return storage.asset_dir("ce_negatives") / NEGATIVES_FILE
    if source.startswith("llm-"):
        return storage.asset_dir("llm_negatives", source.removeprefix("llm-")) / NEGATIVES_FILE
    raise ConfigError(f"unknown negative set {source!r}")


def producer(source: str) -> str:
    """The asset (and partition) that writes a negative set, for error messages."""
    if source.startswith("llm-"):
        return f"llm_negatives[{source.removeprefix('llm-')}]"
    return f"{source}_negatives"


def read_negatives(storage: StorageResource, source: str, where: str) -> pl.DataFrame:
    """Read one negative set and check its schema; a missing file names the asset to materialize."""
    path = negatives_path(storage, source)
    if not path.is_file():
        raise DataValidationError(path, f"{where}: negative set {source!r} is missing; materialize {producer(source)}")
    frame = pl.read_parquet(path)
    if dict(frame.schema) != NEGATIVES_SCHEMA:
        raise DataValidationError(path, f"{where}: schema {dict(frame.schema)} differs from {NEGATIVES_SCHEMA}")
    return frame


def profile_sources(profile: Profile) -> list[str]:
    """Every negative set of the profile: `bm25`, `ce`, `llm-<g>` per generator."""
    return ["bm25", "ce", *(llm_source(g) for g in profile.generator_keys)]


def _recipe_map(profile: Profile) -> dict[str, Recipe]:
    return {r.key: r for r in recipes(profile)}


def _generator_to_recipes(profile: Profile, *, filtered_only: bool) -> dict[str, set[str]]:
    mapping: dict[str, set[str]] = {g: set() for g in profile.generator_keys}
    for recipe in recipes(profile):
        if filtered_only and not recipe.ce_filtered:
            continue
        for source in recipe.llm_sources:
            mapping[source.removeprefix("llm-")].add(recipe.key)
    return mapping


def owner_gone(instance: dg.DagsterInstance, current_run_id: str, run) -> bool:
    """Whether the process that opened an MLflow run left it RUNNING for good.

    Same host: the owning process (tag `hnr/pid`) is dead, or it is this process and the run belongs
    to an earlier Dagster run. Another host: its Dagster run is recorded as finished.
    """
    tags = run.data.tags
    pid = int(tags.get("hnr/pid", "0") or 0)
    if tags.get("hnr/host") == socket.gethostname() and pid:
        if pid == os.getpid():
            return tags.get("hnr/dagster_run_id") != current_run_id
        return not pid_alive(pid)
    record = instance.get_run_by_id(tags.get("hnr/dagster_run_id", "")) if tags.get("hnr/dagster_run_id") else None
    return record is not None and record.is_finished


def _md_sample(frame: pl.DataFrame, columns: list[str]) -> dg.MetadataValue:
    sample = frame.head(SAMPLE_ROWS).select(columns)
    return dg.MetadataValue.md(md_table(sample.iter_rows(), sample.columns))


# ------------------------------------------------------------------------------------------ definitions


def build_defs(profile: Profile) -> dg.Definitions:
    """The training stage of `profile`."""
    assets = [training_sets_asset(profile), base_encoder_asset(profile), encoders_asset(profile)]
    if profile.generator_keys:
        assets.insert(0, ce_scores_asset(profile))
    return dg.Definitions(assets=assets)


def ce_scores_asset(profile: Profile) -> dg.AssetsDefinition:
    """`llm_negatives_ce_scores`, partitioned by generator."""

    @dg.asset(
        name="llm_negatives_ce_scores",
        group_name="training",
        partitions_def=generator_partitions(profile),
        deps=["llm_negatives", "cross_encoder"],
        kinds={"parquet"},
        code_version=versions.code_version(profile, "llm_negatives_ce_scores"),
        **run_policy("llm_negatives_ce_scores"),
        check_specs=[contract_spec("llm_negatives_ce_scores", description="One probability in [0, 1] per negative.")],
        description=(
            "Cross-encoder probability of each LLM-written negative and of its pair's positive (partition = "
            "generator), scored by the mining stage's cross-encoder (cross_encoder/), for the `-filtered` "
            "recipes: the positive-aware rule of the cross-encoder miner (lib/ce_filter.py) drops negatives "
            "that score as likely positives."
        ),
    )
    def llm_negatives_ce_scores(
        context: dg.AssetExecutionContext, storage: StorageResource, cross_encoder_runtime: CrossEncoderResource
    ) -> dg.MaterializeResult:
        generator = context.partition_key
        source = llm_source(generator)
        where = f"llm_negatives_ce_scores[{generator}]"
        negatives_sha256 = (
            file_sha256(negatives_path(storage, source)) if negatives_path(storage, source).is_file() else ""
        )
        negatives = read_negatives(storage, source, where)
        model_dir = storage.asset_dir("cross_encoder")
        if not model_dir.is_dir():
            raise DataValidationError(model_dir, f"{where}: the cross-encoder is missing; materialize cross_encoder")
        scorer = cross_encoder_runtime.load(model_dir)
        started = time.perf_counter()
        positives = negatives.unique(["query_id", "positive_id"], keep="first", maintain_order=True)
        queries = negatives["query"].to_list() + positives["query"].to_list()
        passages = negatives["negative"].to_list() + positives["positive"].to_list()
        context.log.info(
            f"{where}: scoring {negatives.height} negatives and {positives.height} positives with "
            f"{scorer.runtime} at {scorer.max_length} tokens"
        )
        progress = Progress(where, len(queries), context.log.info, unit="pairs")
        scores = [float(s) for s in scorer.score(queries, passages, progress.update)]
        negative_scores = scores[: negatives.height]
        positive_scores = positives.select("query_id", "positive_id").with_columns(
            pl.Series("positive_score", scores[negatives.height :], dtype=pl.Float64)
        )
        frame = (
            negatives.select("query_id", "positive_id", "negative_rank")
            .with_columns(pl.Series("negative_score", negative_scores, dtype=pl.Float64))
            .join(positive_scores, on=["query_id", "positive_id"], how="left")
            .cast(CE_SCORES_SCHEMA)
        )
        target = storage.asset_dir("llm_negatives_ce_scores", generator)
        with atomic_dir(target) as tmp:
            frame.write_parquet(tmp / SCORES_FILE, compression="zstd")
            manifest = {"negatives": str(negatives_path(storage, source)), "negatives_sha256": negatives_sha256}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        bad = frame.filter(
            pl.any_horizontal(
                pl.col(c).is_null() | (pl.col(c) < 0) | (pl.col(c) > 1) for c in ("negative_score", "positive_score")
            )
        ).height
        return dg.MaterializeResult(
            metadata={
                "negatives_scored": frame.height,
                "pairs": positives.height,
                "mean_negative_score": round(float(frame["negative_score"].mean() or 0.0), 4),
                "mean_positive_score": round(float(positive_scores["positive_score"].mean() or 0.0), 4),
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target / SCORES_FILE)),
                versions.METADATA_KEY: versions.settings_hash(profile, "llm_negatives_ce_scores", generator),
                "likeliest_false_negatives": _md_sample(
                    negatives.join(frame, on=["query_id", "positive_id", "negative_rank"])
                    .with_columns((pl.col("negative_score") / pl.col("positive_score")).alias("ratio"))
                    .sort("ratio", descending=True),
                    ["query", "positive", "negative", "negative_score", "positive_score"],
                ),
            },
            check_results=[problems_result("contract", [f"{bad} scores are null or outside [0, 1]"] if bad else [])],
        )

    return llm_negatives_ce_scores


def training_sets_asset(profile: Profile) -> dg.AssetsDefinition:
    """`training_sets`, partitioned by recipe; launchpad config = the profile's `training.sets`."""
    spec = profile.training
    by_key = _recipe_map(profile)
    TrainingSetsConfig = config_class(
        "TrainingSetsConfig", spec.sets, "How the training set is assembled (defaults: the profile's `training.sets`)."
    )
    if spec.sets.same_queries:
        llm_mapping: dg.PartitionMapping = dg.AllPartitionMapping()
    else:
        llm_mapping = dg.StaticPartitionMapping(_generator_to_recipes(profile, filtered_only=False))
    training_set_deps: list = ["training_pairs", "bm25_negatives", "ce_negatives"]
    if profile.generator_keys:
        training_set_deps += [
            dg.AssetDep("llm_negatives", partition_mapping=llm_mapping),
            dg.AssetDep(
                "llm_negatives_ce_scores",
                partition_mapping=dg.StaticPartitionMapping(_generator_to_recipes(profile, filtered_only=True)),
            ),
        ]

    @dg.asset(
        name="training_sets",
        group_name="training",
        partitions_def=recipe_partitions(profile),
        deps=training_set_deps,
        kinds={"parquet"},
        code_version=versions.code_version(profile, "training_sets"),
        **run_policy("training_sets"),
        check_specs=[
            contract_spec("training_sets", description="Columns and types, no empty text, split by query."),
            contract_spec("training_sets", "not_positive", "No negative equals its positive (normalised text)."),
        ],
        description=(
            "The rows one encoder is trained on (partition = recipe): query, positive, 5 hard negatives and "
            "their source; combined recipes concatenate the rows of their sources (the study's choice). "
            "By default every recipe uses the pairs covered by all negative sources of the profile, and "
            "the same 90/10 split by query."
        ),
    )
    def training_sets(
        context: dg.AssetExecutionContext, config: TrainingSetsConfig, storage: StorageResource
    ) -> dg.MaterializeResult:
        return each_partition(context, lambda key: one_training_set(key, config, storage))

    def one_training_set(key: str, config: dg.Config, storage: StorageResource) -> dg.MaterializeResult:
        recipe = by_key[key]
        settings = merge(spec.sets, config, f"training_sets[{recipe.key}]")
        where = f"training_sets[{recipe.key}]"
        started = time.perf_counter()
        pairs_file = storage.asset_dir("training_pairs") / "pairs.parquet"
        if not pairs_file.is_file():
            raise DataValidationError(pairs_file, f"{where}: missing input; materialize training_pairs first")
        needed = profile_sources(profile) if settings.same_queries else list(recipe.sources)
        frames = {source: read_negatives(storage, source, where) for source in needed}
        keep = common_pairs(frames, settings.min_negatives) if settings.same_queries else None
        filtered_out = 0
        used = {source: frames[source] for source in recipe.sources}
        score_files: dict[str, str] = {}
        if recipe.ce_filtered:
            for source in recipe.llm_sources:
                generator = source.removeprefix("llm-")
                folder = storage.asset_dir("llm_negatives_ce_scores", generator)
                if not (folder / SCORES_FILE).is_file():
                    raise DataValidationError(
                        folder / SCORES_FILE,
                        f"{where}: cross-encoder scores of {source} are missing; materialize "
                        f"llm_negatives_ce_scores[{generator}] (it needs the mining stage's cross-encoder)",
                    )
                manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
                current = file_sha256(negatives_path(storage, source))
                if manifest.get("negatives_sha256") != current:
                    raise DataValidationError(
                        folder / SCORES_FILE,
                        f"{where}: the scores were computed for another version of {source}; rematerialize "
                        f"llm_negatives_ce_scores[{generator}]",
                    )
                used[source], dropped = apply_ce_filter(
                    used[source],
                    pl.read_parquet(folder / SCORES_FILE),
                    relative_margin=settings.filter_relative_margin,
                    absolute_margin=settings.filter_absolute_margin,
                )
                filtered_out += dropped
                score_files[source] = file_sha256(folder / SCORES_FILE)
        assembled = assemble_training_set(
            recipe.sources,
            used,
            per_row=settings.negatives_per_row,
            min_negatives=settings.min_negatives,
            keep_pairs=keep,
            query_universe=pl.read_parquet(pairs_file, columns=["query_id"])["query_id"].to_list(),
            validation_fraction=settings.validation_fraction,
            split_seed=settings.split_seed,
        )
        rows = assembled.rows
        if rows.filter(pl.col("split") == "train").height == 0:
            raise DataValidationError(
                negatives_path(storage, recipe.sources[0]),
                f"{where}: no training rows (sources {', '.join(recipe.sources)}; "
                f"{'common pairs: ' + str(keep.height) if keep is not None else 'own pairs'})",
            )
        fingerprint = frame_fingerprint(rows)
        manifest = {
            "recipe": recipe.key,
            "sources": list(recipe.sources),
            "ce_filtered": recipe.ce_filtered,
            "in_study": recipe.in_study,
            "settings": settings.model_dump(),
            "fingerprint": fingerprint,
            "source_files": {
                s: {"path": str(negatives_path(storage, s)), "sha256": file_sha256(negatives_path(storage, s))}
                for s in needed
            },
            "ce_score_files_sha256": score_files,
            "common_pairs": keep.height if keep is not None else None,
            "negatives_filtered_out": filtered_out,
            "stats": assembled.stats,
        }
        target = storage.asset_dir("training_sets", recipe.key)
        with atomic_dir(target) as tmp:
            rows.write_parquet(tmp / TRAINING_SET_FILE, compression="zstd")
            assembled.split.write_parquet(tmp / SPLIT_FILE, compression="zstd")
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        stored = pl.read_parquet(target / TRAINING_SET_FILE)
        problems = validate_training_set(stored, settings.negatives_per_row)
        stats = assembled.stats
        per_source = stats["per_source"]
        assert isinstance(per_source, dict)
        return dg.MaterializeResult(
            metadata={
                "rows": stats["rows"],
                "pairs": stats["pairs"],
                "queries": stats["queries"],
                "train_rows": stats["train_rows"],
                "validation_rows": stats["validation_rows"],
                "validation_queries": stats["validation_queries"],
                "rows_per_source": dg.MetadataValue.json(per_source),
                "common_pairs": keep.height if keep is not None else "off (same_queries: false)",
                "short_rows_filled": stats["short_rows_filled"],
                "pairs_dropped_short": stats["pairs_dropped_short"],
                "negatives_filtered_out": filtered_out,
                "fingerprint": fingerprint,
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target / TRAINING_SET_FILE)),
                versions.METADATA_KEY: versions.settings_hash(
                    profile, "training_sets", key, {"training.sets": settings}
                ),
                "sample_rows": _md_sample(stored, ["query", "positive", "negative_1", "source", "split"]),
            },
            check_results=[
                problems_result("contract", problems["schema"] + problems["split"]),
                problems_result("not_positive", problems["not_positive"]),
            ],
        )

    return training_sets


def base_encoder_asset(profile: Profile) -> dg.AssetsDefinition:
    """`base_encoder`: the profile's `training.base_encoder` as a sentence-transformers folder."""
    base = profile.training.base_encoder

    @dg.asset(
        name="base_encoder",
        group_name="training",
        kinds={"pytorch"},
        code_version=versions.code_version(profile, "base_encoder"),
        **run_policy("base_encoder"),
        check_specs=[contract_spec("base_encoder", "loads", "The folder loads with SentenceTransformer and encodes.")],
        description=(
            f"The encoder every recipe fine-tunes ({base.model}), saved as a sentence-transformers folder "
            "base_encoder/model/: downloaded from the model hub, unpacked from an installed Python package, "
            "or (test profile) a tiny random BERT built in the run."
        ),
    )
    def base_encoder(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        from hnr_assets.lib.encoder_models import build_base_encoder

        started = time.perf_counter()
        target = storage.asset_dir("base_encoder")
        context.log.info(f"base encoder: {base.model} (max_seq_length {base.max_seq_length})")
        with atomic_dir(target) as tmp:
            info = build_base_encoder(
                base.model,
                tmp / "model",
                cache_dir=storage.shared_dir("cache", "hub"),
                revision=base.revision,
                pooling=base.pooling,
                max_seq_length=base.max_seq_length,
                seed=base.seed,
                trust_remote_code=base.trust_remote_code,
            )
            (tmp / "base_encoder.json").write_text(
                json.dumps({"model": base.model, "revision": base.revision, **info}, indent=2), encoding="utf-8"
            )
        problems = _load_problems(target / "model", int(info["dimension"]), base.trust_remote_code)
        return dg.MaterializeResult(
            metadata={
                **{k: v for k, v in info.items() if k != "source_detail"},
                "model": base.model,
                "source_detail": str(info["source_detail"]),
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target / "model")),
                versions.METADATA_KEY: versions.settings_hash(profile, "base_encoder"),
            },
            check_results=[problems_result("loads", problems)],
        )

    return base_encoder


def encoders_asset(profile: Profile) -> dg.AssetsDefinition:
    """`encoders`, partitioned by recipe; launchpad config = the profile's `training.trainer`."""
    spec = profile.training
    by_key = _recipe_map(profile)
    EncoderConfig = config_class(
        "EncoderConfig", spec.trainer, "Fine-tuning settings (defaults: the profile's `training.trainer`)."
    )

    @dg.asset(
        name="encoders",
        group_name="training",
        partitions_def=recipe_partitions(profile),
        deps=["training_sets", "base_encoder", "training_pairs"],
        kinds={"pytorch", "mlflow"},
        code_version=versions.code_version(profile, "encoders"),
        **run_policy("encoders"),
        check_specs=[
            contract_spec("encoders", description="training.json is complete, the model folder and version exist."),
            quality_spec("encoders", "beats_base", "Best validation nDCG@10 is above the base encoder's."),
        ],
        description=(
            "One dense retriever per recipe: the base encoder fine-tuned with MultipleNegativesRankingLoss "
            "(sentence-transformers trainer, no duplicate texts in a batch), evaluated by nDCG@10 on the "
            "held-out queries every eval_steps, early stopping, best checkpoint kept. Each is an MLflow run "
            "(parameters, curves, the model) and a new version of the registered model hnr-<profile>-<recipe>."
        ),
    )
    def encoders(
        context: dg.AssetExecutionContext, config: EncoderConfig, storage: StorageResource, mlflow: MlflowResource
    ) -> dg.MaterializeResult:
        from hnr_assets.lib.encoder_training import PRIMARY, metric_name, train_encoder, validation_data

        recipe = by_key[context.partition_key]
        where = f"encoders[{recipe.key}]"
        settings = merge(spec.trainer, config, where)
        sets_dir = storage.asset_dir("training_sets", recipe.key)
        base_dir = storage.asset_dir("base_encoder")
        pairs_dir = storage.asset_dir("training_pairs")
        for path, what in (
            (sets_dir / TRAINING_SET_FILE, f"training_sets[{recipe.key}]"),
            (base_dir / "model" / "modules.json", "base_encoder"),
            (pairs_dir / "corpus.parquet", "training_pairs"),
        ):
            if not path.is_file():
                raise DataValidationError(path, f"{where}: missing input; materialize {what} first")
        set_manifest = json.loads((sets_dir / "manifest.json").read_text(encoding="utf-8"))
        base_info = json.loads((base_dir / "base_encoder.json").read_text(encoding="utf-8"))
        per_row = int(set_manifest["settings"]["negatives_per_row"])
        rows = pl.read_parquet(sets_dir / TRAINING_SET_FILE)
        train_rows = rows.filter(pl.col("split") == "train")
        split = pl.read_parquet(sets_dir / SPLIT_FILE)
        validation = validation_data(
            pl.read_parquet(pairs_dir / "queries.parquet"),
            pl.read_parquet(pairs_dir / "qrels.parquet"),
            pl.read_parquet(pairs_dir / "corpus.parquet"),
            split.filter(pl.col("split") == "validation")["query_id"].to_list(),
            max_queries=settings.validation_queries,
            corpus_size=settings.validation_corpus_size,
            seed=settings.seed,
        )

        run_tags = {"hnr/asset": "encoders", "hnr/partition": recipe.key}
        closed = mlflow.close_stale_runs(
            run_tags,
            lambda run: owner_gone(context.instance, context.run.run_id, run),
            reason=f"its process ended without closing it; closed by Dagster run {context.run.run_id}",
        )
        if closed:
            context.log.warning(f"{where}: marked FAILED the MLflow runs left RUNNING by a killed process: {closed}")

        registered_name = f"hnr-{profile.name}-{recipe.key}"
        params = {
            "recipe": recipe.key,
            "sources": ",".join(recipe.sources),
            "ce_filtered": recipe.ce_filtered,
            "in_study": recipe.in_study,
            "profile": profile.name,
            "base_model": base_info["model"],
            "base_model_source": base_info.get("source_detail", ""),
            "train_rows": train_rows.height,
            "train_queries": train_rows["query_id"].n_unique(),
            "training_set_fingerprint": set_manifest["fingerprint"],
            **{f"trainer.{k}": v for k, v in settings.model_dump().items()},
            **{f"sets.{k}": v for k, v in set_manifest["settings"].items()},
            **{f"source_sha256.{s}": f["sha256"][:16] for s, f in set_manifest["source_files"].items()},
            **validation.describe(),
        }
        for source in recipe.llm_sources:
            gen = profile.generator(source.removeprefix("llm-"))
            params.update({f"generator.{gen.key}.model": gen.model, f"generator.{gen.key}.prompt": gen.prompt})
            params[f"generator.{gen.key}.backend"] = gen.backend
        settings_hash = versions.settings_hash(profile, "encoders", recipe.key, {"training.trainer": settings})
        tags = {
            **run_tags,
            versions.MLFLOW_TAG: settings_hash,
            "hnr/profile": profile.name,
            "hnr/dagster_run_id": context.run.run_id,
            "hnr/host": socket.gethostname(),
            "hnr/pid": str(os.getpid()),
        }
        target = storage.asset_dir("encoders", recipe.key)
        started = time.perf_counter()
        with mlflow.run(f"encoder:{recipe.key}", tags=tags) as run:
            context.log.info(f"{where}: MLflow run {run.run_id} ({run.url})")
            run.log_params(params)
            with atomic_dir(target) as tmp:
                outcome = train_encoder(
                    base_dir / "model",
                    train_rows,
                    validation,
                    settings,
                    per_row=per_row,
                    work_dir=tmp / "_work",
                    output_dir=tmp / "model",
                    save_max_seq_length=int(base_info["max_seq_length"]),
                    on_metrics=lambda step, metrics: run.log_metrics(dict(metrics), step=step),
                    log=lambda msg: context.log.info(f"{where}: {msg}"),
                    trust_remote_code=profile.training.base_encoder.trust_remote_code,
                )
                shutil.rmtree(tmp / "_work", ignore_errors=True)
                summary = {
                    "base_validation_score": outcome.base_score,
                    "best_validation_score": outcome.best_score,
                    "best_step": outcome.best_step,
                    "steps": outcome.global_step,
                    "train_seconds": outcome.train_seconds,
                    "examples_per_second": outcome.examples_per_second,
                }
                run.log_metrics({f"final.{k}": float(v) for k, v in summary.items()}, step=outcome.global_step)
                run.set_tags({"hnr/precision": outcome.precision, "hnr/device": outcome.device})
                source = run.log_sentence_transformer(
                    tmp / "model", trust_remote_code=profile.training.base_encoder.trust_remote_code
                )
                version = run.register_model(
                    registered_name,
                    source,
                    description=f"Recipe {recipe.key} ({', '.join(recipe.sources)}), profile {profile.name}.",
                    tags={"recipe": recipe.key, "profile": profile.name, "dagster_run_id": context.run.run_id},
                )
                training = {
                    "recipe": recipe.key,
                    "sources": list(recipe.sources),
                    "mlflow_run_id": run.run_id,
                    "mlflow_run_url": run.url,
                    "registered_model": registered_name,
                    "model_version": version,
                    "best_step": outcome.best_step,
                    "best_validation_score": outcome.best_score,
                    "base_validation_score": outcome.base_score,
                    "validation_metric": PRIMARY,
                    "base_model": base_info["model"],
                    "steps": outcome.global_step,
                    "planned_steps": outcome.planned_steps,
                    "stopped_early": outcome.stopped_early,
                    "evaluations": outcome.evaluations,
                    "train_seconds": round(outcome.train_seconds, 2),
                    "train_cpu_seconds": round(outcome.train_cpu_seconds, 2),
                    "examples_per_second": round(outcome.examples_per_second, 3),
                    "precision": outcome.precision,
                    "device": outcome.device,
                    "train_max_seq_length": settings.max_seq_length,
                    "max_seq_length": int(base_info["max_seq_length"]),
                    "training_set_fingerprint": set_manifest["fingerprint"],
                    "settings": settings.model_dump(),
                    **validation.describe(),
                }
                (tmp / "training.json").write_text(json.dumps(training, indent=2), encoding="utf-8")
                (tmp / "history.json").write_text(json.dumps(outcome.history, indent=2), encoding="utf-8")
                run.log_artifact(tmp / "training.json")
                run.log_artifact(tmp / "history.json")
            url = run.url
        problems = _encoder_problems(target, mlflow, registered_name, version)
        beats = outcome.best_score > outcome.base_score
        return dg.MaterializeResult(
            metadata={
                "mlflow_run_id": run.run_id,
                "mlflow_run": dg.MetadataValue.url(url),
                "registered_model": registered_name,
                "model_version": version,
                "registered_model_link": dg.MetadataValue.url(mlflow.model_url(registered_name, version)),
                f"best_{metric_name('validation_' + PRIMARY)}": round(outcome.best_score, 4),
                f"base_{metric_name('validation_' + PRIMARY)}": round(outcome.base_score, 4),
                "best_step": outcome.best_step,
                "steps": outcome.global_step,
                "planned_steps": outcome.planned_steps,
                "stopped_early": outcome.stopped_early,
                "train_rows": train_rows.height,
                "examples_per_second": round(outcome.examples_per_second, 2),
                "precision": outcome.precision,
                "device": outcome.device,
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target / "model")),
                versions.METADATA_KEY: settings_hash,
                "validation_curve": dg.MetadataValue.md(
                    md_table(((s, f"{v:.4f}") for s, v in outcome.evaluations), ["step", f"validation {PRIMARY}"])
                ),
            },
            check_results=[
                problems_result("contract", problems),
                problems_result(
                    "beats_base",
                    []
                    if beats
                    else [f"best validation {PRIMARY} {outcome.best_score:.4f} <= base {outcome.base_score:.4f}"],
                    severity=dg.AssetCheckSeverity.WARN,
                    best=round(outcome.best_score, 4),
                    base=round(outcome.base_score, 4),
                ),
            ],
        )

    return encoders


def _load_problems(model_dir: Path, dimension: int, trust_remote_code: bool = False) -> list[str]:
    """The base encoder folder loads and encodes a sentence to a vector of the recorded dimension."""
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(
            str(model_dir), device="cpu", local_files_only=True, trust_remote_code=trust_remote_code
        )
        vector = model.encode(["a query about hard negatives"])
    except (OSError, ValueError, RuntimeError) as exc:
        return [f"{model_dir} does not load: {exc}"]
    return [] if vector.shape == (1, dimension) else [f"encodes to shape {vector.shape}, expected (1, {dimension})"]


def _encoder_problems(target: Path, mlflow: MlflowResource, name: str, version: str) -> list[str]:
    """training.json has the contract's keys, the model folder is complete, the registered version exists."""
    problems = []
    training = json.loads((target / "training.json").read_text(encoding="utf-8"))
    missing = [k for k in REQUIRED_TRAINING_KEYS if k not in training]
    if missing:
        problems.append(f"training.json lacks {', '.join(missing)}")
    for name_ in ("modules.json", "config.json"):
        if not (target / "model" / name_).is_file():
            problems.append(f"model/{name_} is missing")
    client = mlflow.client()
    got = mlflow.call("get the model version", lambda: client.get_model_version(name, version))
    if got.run_id != training.get("mlflow_run_id"):
        problems.append(f"registered version {name}/{version} points to run {got.run_id}")
    return problems
