"""Assets `generator_models` and `llm_negatives`, one partition per generator of the profile."""

import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import polars as pl

from hnr_assets.defs import versions
from hnr_assets.defs.checks import negative_set_check_results, negative_set_checks
from hnr_assets.defs.execution import hnr_asset
from hnr_assets.defs.layout import GENERATOR_MODEL, SUMMARY, Layout
from hnr_assets.defs.rates import log_probes, probes_metadata
from hnr_assets.lib.generation.generator_models import ServedModel, prepare_model
from hnr_assets.lib.generation.llm_output import REASONS, ValidationRules
from hnr_assets.lib.generation.prompts import PromptTemplate, load_prompt
from hnr_assets.lib.generation.runner import (
    SHARD_TABLES,
    GenerationPlan,
    RunReport,
    collect_outputs,
    generate_negatives,
    probe_generation,
    select_pairs,
    summarize,
    write_outputs,
)
from hnr_assets.lib.generation.shards import ShardStore
from hnr_assets.lib.runtime.io import write_text
from hnr_assets.lib.runtime.progress import Progress
from hnr_assets.lib.runtime.rates import RateProbe
from hnr_assets.lib.runtime.report import md_table
from hnr_assets.lib.training.recipes import llm_source
from hnr_assets.profiles.schema import GenerationSettings, GeneratorSpec, Profile
from hnr_assets.resources.generators import GeneratorBackendsResource, sampling_of
from hnr_assets.resources.mlflow import (
    TAG_ASSET,
    TAG_GENERATION_DAGSTER_RUN,
    TAG_PARTITION,
    TAG_SETTINGS_HASH,
    MlflowResource,
    TrackedRun,
)
from hnr_assets.resources.storage import StorageResource

SAMPLE_ROWS = 8


def _md_counts(counts: dict, label: str) -> str:
    rows = [(k, v, REASONS.get(k, "")) for k, v in counts.items()]
    return md_table(rows, [label, "count", "meaning"]) if rows else "none"


def generator_models_asset(profile: Profile) -> dg.AssetsDefinition:
    """`generator_models`, partitioned by generator: the weights as a local transformers folder."""

    @hnr_asset(
        "generator_models",
        profile,
        kinds={"transformers"},
        description=(
            "The weights of one generator (partition = generator key), as a local transformers folder: downloaded "
            "from the model hub, converted once from a GGUF file shipped in a Python package, or a tiny random "
            "causal LM (test profile). For a served model (backend `openai`), a check that the endpoint serves it. "
            "`model.json` says where the weights are."
        ),
    )
    def generator_models(
        context: dg.AssetExecutionContext, storage: StorageResource, generator_backends: GeneratorBackendsResource
    ) -> dg.MaterializeResult:
        spec = profile.generator(context.partition_key)
        started = time.perf_counter()
        target = Layout(storage).folder("generator_models", spec.key)
        target.mkdir(parents=True, exist_ok=True)
        served = None
        if spec.backend == "openai":
            openai = generator_backends.openai
            served = ServedModel(openai.endpoint_for(spec), openai.api_key, openai.connect_timeout_seconds)
        info = prepare_model(
            spec.model,
            spec.backend,
            key=spec.key,
            seed=spec.seed,
            target=target,
            models_dir=lambda *parts: storage.shared_dir("models", *parts),
            served=served,
            log=context.log.info,
        )
        if info["path"] is not None:  # files the backend needs besides the weights (a CTranslate2 copy)
            info["engine"] = generator_backends.for_spec(spec).prepare(Path(info["path"]), context.log.info)
        write_text(json.dumps(info, indent=2), target / GENERATOR_MODEL)
        manifest = info.get("manifest") or {}
        return dg.MaterializeResult(
            metadata={
                "model": spec.model,
                "backend": spec.backend,
                "source": info["source"]["kind"],
                "identity": info["identity"],
                "weights": dg.MetadataValue.path(info["path"]) if info["path"] else "served",
                "parameters": int(manifest.get("parameters", 0)),
                "path": dg.MetadataValue.path(str(target / GENERATOR_MODEL)),
                **{f"{k}_files": dg.MetadataValue.path(v["path"]) for k, v in info.get("engine", {}).items()},
                "seconds": round(time.perf_counter() - started, 2),
            }
        )

    return generator_models


def llm_negatives_asset(profile: Profile) -> dg.AssetsDefinition:
    """`llm_negatives`, partitioned by generator: negatives written by the LLM, resumable by shard."""
    gen = profile.generation

    @hnr_asset(
        "llm_negatives",
        profile,
        deps=["training_pairs", "generator_models"],
        kinds={"parquet"},
        checks=negative_set_checks(gen.min_full_share),
        description=(
            "Hard negatives written by one LLM with no corpus access (partition = generator key): 5 per "
            "(query, positive) of the training pairs (a seeded subset when `generation.max_pairs` is set, the "
            "same for every generator). Written in shards as it goes; a killed run resumes where it stopped. "
            "Files: negatives.parquet (shared negative-set schema, source `llm-<key>`), rejections.parquet "
            "(every rejected or unused passage with its reason), pair_stats.parquet, summary.json, and shards/ "
            "(also holding every raw completion: shards/<signature>/shard-*/completions.parquet)."
        ),
    )
    def llm_negatives(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        generator_backends: GeneratorBackendsResource,
        mlflow: MlflowResource,
    ) -> dg.MaterializeResult:
        return generate_llm_negatives(profile, context, storage, generator_backends, mlflow)

    return llm_negatives


def _plan(spec: GeneratorSpec, gen: GenerationSettings, template: PromptTemplate) -> GenerationPlan:
    return GenerationPlan(
        source=llm_source(spec.key),
        template=template,
        completions=spec.completions,
        max_attempts=spec.max_attempts,
        base_seed=spec.seed,
        rules=ValidationRules(**gen.validation.model_dump()),
        pairs_per_shard=spec.pairs_per_shard,
        max_positive_words=gen.max_positive_words,
        retry_factor=spec.retry_factor,
    )


def generate_llm_negatives(
    profile: Profile, context, storage: StorageResource, backends: GeneratorBackendsResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The body of `llm_negatives`: generate the missing shards, collect every shard, report."""
    spec, gen, layout = profile.generator(context.partition_key), profile.generation, Layout(storage)
    started = time.perf_counter()
    where = f"llm_negatives[{spec.key}]"
    model = json.loads(layout.generator_model(spec.key).require(where).read_text(encoding="utf-8"))
    all_pairs = pl.read_parquet(layout.training_pairs("pairs").require(where))
    pairs = select_pairs(all_pairs, gen.max_pairs, gen.pair_seed)
    template = load_prompt(spec.prompt)
    backend = backends.for_spec(spec)
    plan = _plan(spec, gen, template)
    signature = plan.signature_settings(
        model["identity"],
        spec.backend,
        sampling_of(spec),
        {"chat_template_kwargs": spec.chat_template_kwargs, **backend.describe()},
    )
    target = layout.folder("llm_negatives", spec.key)
    store = ShardStore(target / "shards", signature, SHARD_TABLES)
    context.log.info(
        f"{plan.source}: {pairs.height} of {all_pairs.height} training pairs, prompt {template.id}, "
        f"{spec.completions} completion(s) x up to {spec.max_attempts} attempts, shards in {store.folder}"
    )
    with store:
        done = len(store.done_pairs() & set(pairs.select("query_id", "positive_id").iter_rows()))
        report = None
        if done < pairs.height:
            progress = Progress(where, pairs.height - done, context.log.info, unit="pairs")
            with backend.engine(spec, model["path"], context.log.info) as engine:
                report = generate_negatives(pairs, engine, plan, store, log=context.log.info, on_shard=progress.update)
        outputs = collect_outputs(store, pairs)
    paths = write_outputs(outputs, target)
    summary = _summary(spec, template, outputs, report, pairs, all_pairs, store.signature)
    write_text(json.dumps(summary, indent=2), target / SUMMARY)
    wall = time.perf_counter() - started
    tags = {TAG_GENERATION_DAGSTER_RUN: context.run.run_id, TAG_ASSET: "llm_negatives", TAG_PARTITION: spec.key}
    tags[TAG_SETTINGS_HASH] = versions.settings_hash(profile, "llm_negatives", spec.key)
    run = _log_generation_run(mlflow, tags, spec, gen, pairs, summary, wall, target / SUMMARY)
    probes = _generation_probes(profile, spec, report, model["path"], pairs, plan)
    log_probes(run, probes)
    negatives = outputs["negatives"]
    metadata = _generation_metadata(summary, outputs, pairs, all_pairs, paths, wall, run) | probes_metadata(probes)
    return dg.MaterializeResult(
        metadata=metadata, check_results=negative_set_check_results(negatives, pairs, gen.min_full_share)
    )


def _generation_probes(
    profile: Profile, spec: GeneratorSpec, report: RunReport | None, model_path, pairs: pl.DataFrame, plan
) -> list[RateProbe]:
    """After generating: this run's valid negatives/s against the transformers baseline of before issue 13
    on a few pairs (`lib.generation.runner.probe_generation`); none unless `runtime.rate_probes` is on."""
    settings = profile.runtime.rate_probes
    if not settings.enabled:
        return []
    name = f"hnr {spec.backend}, prompt {spec.prompt}, {spec.completions} x <= {spec.sampling.max_tokens} tokens"
    served = spec.backend == "openai" or model_path is None
    with tempfile.TemporaryDirectory(prefix="hnr-generation-probe-") as work:
        probe = probe_generation(
            report,
            name,
            None if served else Path(model_path),
            pairs,
            plan,
            Path(work),
            sample=settings.generation_pairs,
            seed=settings.seed,
            chat_template_kwargs=dict(spec.chat_template_kwargs),
        )
    return [probe]


def _summary(
    spec: GeneratorSpec,
    template: PromptTemplate,
    outputs: dict[str, pl.DataFrame],
    report: RunReport | None,
    pairs: pl.DataFrame,
    all_pairs: pl.DataFrame,
    signature: str,
) -> dict:
    """`summary.json`: the totals over every shard, and what this run did."""
    summary = summarize(outputs)
    summary.update(
        generator=spec.key,
        model=spec.model,
        backend=spec.backend,
        prompt=template.id,
        prompt_sha256=template.sha256,
        training_pairs=all_pairs.height,
        signature=signature,
        this_run={
            "pairs_generated": report.pairs_generated if report else 0,
            "pairs_resumed": report.pairs_skipped if report else pairs.height,
            "completion_tokens": report.completion_tokens if report else 0,
            "generate_seconds": round(report.generate_seconds, 2) if report else 0.0,
            "tokens_per_second": round(report.tokens_per_second, 2) if report else 0.0,
        },
    )
    return summary


def _log_generation_run(
    mlflow: MlflowResource,
    tags: dict[str, str],
    spec: GeneratorSpec,
    gen: GenerationSettings,
    pairs: pl.DataFrame,
    summary: dict,
    wall: float,
    summary_file,
) -> TrackedRun:
    """One MLflow run per materialization: the settings as parameters, yield and speed as metrics."""
    with mlflow.run(f"llm_negatives:{spec.key}", tags=tags) as run:
        run.log_params(
            {
                **{k: summary[k] for k in ("generator", "model", "backend", "prompt", "prompt_sha256")},
                "completions": spec.completions,
                "max_attempts": spec.max_attempts,
                "seed": spec.seed,
                "pairs": pairs.height,
                "max_pairs": gen.max_pairs,
                "signature": summary["signature"],
                **{f"sampling.{k}": v for k, v in spec.sampling.model_dump().items()},
                **{f"chat_template.{k}": v for k, v in spec.chat_template_kwargs.items()},
            }
        )
        measured = ("yield", "acceptance_rate", "negatives", "completion_tokens", "tokens_per_second", "pairs_per_hour")
        run.log_metrics(
            {
                **{k: summary[k] for k in measured},
                "wall_seconds": wall,
                **{f"rejected.{k}": v for k, v in summary["rejection_reasons"].items()},
            }
        )
        run.log_artifact(summary_file)
    return run


def _generation_metadata(
    summary: dict, outputs: dict, pairs: pl.DataFrame, all_pairs: pl.DataFrame, paths: dict, wall: float, run
) -> dict:
    """What the UI shows: yield, rejection reasons, parse forms, speed, samples, the MLflow run."""
    sample = outputs["negatives"].head(SAMPLE_ROWS).select("query", "negative_rank", "negative")
    rejected = outputs["rejections"].filter(pl.col("reason") != "surplus").head(SAMPLE_ROWS)
    float_md = dg.MetadataValue.float
    return {
        "pairs": pairs.height,
        "training_pairs": all_pairs.height,
        "yield": float_md(round(summary["yield"], 4)),
        **{k: summary[k] for k in ("pairs_full", "pairs_partial", "pairs_none", "negatives", "completions")},
        "acceptance_rate": float_md(round(summary["acceptance_rate"], 4)),
        "rejection_reasons": dg.MetadataValue.md(_md_counts(summary["rejection_reasons"], "reason")),
        "parse_forms": dg.MetadataValue.md(_md_counts(summary["parse_forms"], "form")),
        "completion_tokens": summary["completion_tokens"],
        "tokens_per_second": float_md(round(summary["tokens_per_second"], 2)),
        "pairs_per_hour": float_md(round(summary["pairs_per_hour"], 1)),
        "generated_this_run": summary["this_run"]["pairs_generated"],
        "resumed_from_shards": summary["this_run"]["pairs_resumed"],
        "wall_seconds": round(wall, 2),
        "prompt": summary["prompt"],
        "signature": summary["signature"],
        "path": dg.MetadataValue.path(str(paths["negatives"])),
        "rejections_path": dg.MetadataValue.path(str(paths["rejections"])),
        "sample_negatives": dg.MetadataValue.md(md_table(sample.iter_rows(), sample.columns)),
        "sample_rejections": dg.MetadataValue.md(
            md_table(rejected.select("reason", "detail", "text").iter_rows(), ["reason", "detail", "text"])
        ),
        "mlflow_run_id": run.run_id,
        "mlflow_run": dg.MetadataValue.url(run.url),
    }


def build_defs(profile: Profile) -> dg.Definitions:
    """The generation stage of `profile`: one factory per asset."""
    return dg.Definitions(assets=[generator_models_asset(profile), llm_negatives_asset(profile)])
