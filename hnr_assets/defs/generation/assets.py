"""Assets `generator_models` and `llm_negatives`, one partition per generator of the profile."""

import json
import time

import dagster as dg
import polars as pl

from hnr_assets.defs import versions
from hnr_assets.defs.checks import negative_set_check_results, negative_set_check_specs
from hnr_assets.defs.execution import run_policy
from hnr_assets.defs.partitions import generator_partitions
from hnr_assets.lib import generator_models as gm
from hnr_assets.lib.errors import ConfigError, SourceNotFoundError
from hnr_assets.lib.generation import (
    SHARD_TABLES,
    GenerationPlan,
    collect_outputs,
    generate_negatives,
    select_pairs,
    summarize,
    write_outputs,
)
from hnr_assets.lib.io import file_sha256, write_text
from hnr_assets.lib.llm_output import REASONS, ValidationRules
from hnr_assets.lib.progress import Progress
from hnr_assets.lib.prompts import load_prompt
from hnr_assets.lib.recipes import llm_source
from hnr_assets.lib.report import md_table
from hnr_assets.lib.shards import ShardStore
from hnr_assets.profiles.schema import GeneratorSpec, Profile
from hnr_assets.resources.generators import GeneratorBackendsResource, OpenAIBackend, sampling_of
from hnr_assets.resources.mlflow import MlflowResource
from hnr_assets.resources.storage import StorageResource

SAMPLE_ROWS = 8
MODEL_FILE = "model.json"


def _served_model_check(spec: GeneratorSpec, backend: OpenAIBackend) -> dict:
    """Ask an OpenAI-compatible server whether it serves the generator's model (`GET /models`)."""
    import requests

    url = backend.endpoint_for(spec) + "/models"
    headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    try:
        response = requests.get(url, headers=headers, timeout=(backend.connect_timeout_seconds, 30))
        response.raise_for_status()
        served = [m.get("id") for m in response.json().get("data", [])]
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise SourceNotFoundError(f"{url}: cannot list the served models ({type(exc).__name__}: {exc})") from None
    if spec.model not in served:
        raise SourceNotFoundError(f"{url} does not serve {spec.model!r}; it serves {served}")
    return {"served_models": served}


def _prepare_model(spec: GeneratorSpec, storage: StorageResource, backends: GeneratorBackendsResource, target, log):
    """Make the generator's weights available locally; returns the `model.json` content."""
    source = gm.model_source(spec.model, spec.backend)
    info: dict = {"key": spec.key, "backend": spec.backend, "source": {"kind": source.kind, "value": source.value}}
    if source.kind == "package":
        gguf, sha = gm.packaged_gguf(source.value)
        sha = sha or file_sha256(gguf)
        folder = storage.shared_dir("models", f"{source.value}-{sha[:12]}")
        with gm.folder_lock(folder):
            manifest = gm.read_manifest(folder)
            if manifest is None:
                manifest = gm.convert_gguf(gguf, folder, log=log, sha256=sha)
            else:
                log(f"{spec.key}: reusing the converted model in {folder}")
        info.update(path=str(folder), identity=f"gguf:{sha}", manifest=manifest)
    elif source.kind == "tiny-random":
        folder = target / "model"
        manifest = gm.build_tiny_causal_lm(folder, seed=spec.seed)
        info.update(path=str(folder), identity=f"tiny-random:seed={spec.seed}", manifest=manifest)
    elif source.kind == "hub":
        folder = storage.shared_dir("models", "hub", source.value.replace("/", "--"))
        with gm.folder_lock(folder):
            manifest = gm.read_manifest(folder)
            if manifest is None:
                manifest = gm.download_hub_model(source.value, folder, log=log)
        info.update(path=str(folder), identity=f"hub:{source.value}", manifest=manifest)
    elif source.kind == "path":
        folder = gm.local_model_folder(source.value)
        info.update(path=str(folder), identity=f"path:{folder}", manifest=gm.read_manifest(folder) or {})
    else:  # served by an OpenAI-compatible endpoint
        endpoint = backends.openai.endpoint_for(spec)
        info.update(path=None, identity=f"served:{spec.model}@{endpoint}", endpoint=endpoint)
        info["manifest"] = _served_model_check(spec, backends.openai)
    if info["path"] is not None:
        problems = gm.check_model_folder(info["path"])
        if problems:
            raise ConfigError("; ".join(problems))
    return info


def _md_counts(counts: dict, label: str) -> str:
    rows = [(k, v, REASONS.get(k, "")) for k, v in counts.items()]
    return md_table(rows, [label, "count", "meaning"]) if rows else "none"


def build_defs(profile: Profile) -> dg.Definitions:
    """The generation stage of `profile`."""
    partitions = generator_partitions(profile)
    gen = profile.generation

    @dg.asset(
        name="generator_models",
        group_name="generation",
        partitions_def=partitions,
        kinds={"transformers"},
        code_version=versions.code_version(profile, "generator_models"),
        **run_policy("generator_models"),
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
        target = storage.asset_dir("generator_models", spec.key)
        target.mkdir(parents=True, exist_ok=True)
        info = _prepare_model(spec, storage, generator_backends, target, context.log.info)
        write_text(json.dumps(info, indent=2), target / MODEL_FILE)
        manifest = info.get("manifest") or {}
        return dg.MaterializeResult(
            metadata={
                "model": spec.model,
                "backend": spec.backend,
                "source": info["source"]["kind"],
                "identity": info["identity"],
                "weights": dg.MetadataValue.path(info["path"]) if info["path"] else "served",
                "parameters": int(manifest.get("parameters", 0)),
                "path": dg.MetadataValue.path(str(target / MODEL_FILE)),
                "seconds": round(time.perf_counter() - started, 2),
                versions.METADATA_KEY: versions.settings_hash(profile, "generator_models", spec.key),
            }
        )

    @dg.asset(
        name="llm_negatives",
        group_name="generation",
        partitions_def=partitions,
        deps=["training_pairs", "generator_models"],
        kinds={"parquet"},
        code_version=versions.code_version(profile, "llm_negatives"),
        **run_policy("llm_negatives"),
        check_specs=negative_set_check_specs("llm_negatives", gen.min_full_share),
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
        spec = profile.generator(context.partition_key)
        started = time.perf_counter()
        model_file = storage.asset_dir("generator_models", spec.key) / MODEL_FILE
        if not model_file.is_file():
            raise ConfigError(f"{model_file} is missing: materialize generator_models[{spec.key}] first")
        model = json.loads(model_file.read_text(encoding="utf-8"))
        all_pairs = pl.read_parquet(storage.asset_dir("training_pairs") / "pairs.parquet")
        pairs = select_pairs(all_pairs, gen.max_pairs, gen.pair_seed)
        template = load_prompt(spec.prompt)
        backend = generator_backends.for_spec(spec)
        plan = GenerationPlan(
            source=llm_source(spec.key),
            template=template,
            completions=spec.completions,
            max_attempts=spec.max_attempts,
            base_seed=spec.seed,
            rules=ValidationRules(**gen.validation.model_dump()),
            pairs_per_shard=spec.pairs_per_shard,
            max_positive_words=gen.max_positive_words,
        )
        signature = plan.signature_settings(
            model["identity"],
            spec.backend,
            sampling_of(spec),
            {"chat_template_kwargs": spec.chat_template_kwargs, **backend.describe()},
        )
        target = storage.asset_dir("llm_negatives", spec.key)
        store = ShardStore(target / "shards", signature, SHARD_TABLES)
        context.log.info(
            f"{plan.source}: {pairs.height} of {all_pairs.height} training pairs, prompt {template.id}, "
            f"{spec.completions} completion(s) x up to {spec.max_attempts} attempts, shards in {store.folder}"
        )
        with store:
            done = len(store.done_pairs() & set(pairs.select("query_id", "positive_id").iter_rows()))
            report = None
            if done < pairs.height:
                progress = Progress(f"llm_negatives[{spec.key}]", pairs.height - done, context.log.info, unit="pairs")
                with backend.engine(spec, model["path"], context.log.info) as engine:
                    report = generate_negatives(
                        pairs, engine, plan, store, log=context.log.info, on_shard=progress.update
                    )
            outputs = collect_outputs(store, pairs)
        paths = write_outputs(outputs, target)
        summary = summarize(outputs)
        summary.update(
            generator=spec.key,
            model=spec.model,
            backend=spec.backend,
            prompt=template.id,
            prompt_sha256=template.sha256,
            training_pairs=all_pairs.height,
            signature=store.signature,
            this_run={
                "pairs_generated": report.pairs_generated if report else 0,
                "pairs_resumed": report.pairs_skipped if report else pairs.height,
                "completion_tokens": report.completion_tokens if report else 0,
                "generate_seconds": round(report.generate_seconds, 2) if report else 0.0,
                "tokens_per_second": round(report.tokens_per_second, 2) if report else 0.0,
            },
        )
        write_text(json.dumps(summary, indent=2), target / "summary.json")
        wall = time.perf_counter() - started

        settings_hash = versions.settings_hash(profile, "llm_negatives", spec.key)
        with mlflow.run(
            f"llm_negatives:{spec.key}",
            tags={
                "dagster/run_id": context.run.run_id,
                "hnr/asset": "llm_negatives",
                "hnr/partition": spec.key,
                versions.MLFLOW_TAG: settings_hash,
            },
        ) as run:
            run.log_params(
                {
                    "generator": spec.key,
                    "model": spec.model,
                    "backend": spec.backend,
                    "prompt": template.id,
                    "prompt_sha256": template.sha256,
                    "completions": spec.completions,
                    "max_attempts": spec.max_attempts,
                    "seed": spec.seed,
                    "pairs": pairs.height,
                    "max_pairs": gen.max_pairs,
                    "signature": store.signature,
                    **{f"sampling.{k}": v for k, v in spec.sampling.model_dump().items()},
                    **{f"chat_template.{k}": v for k, v in spec.chat_template_kwargs.items()},
                }
            )
            run.log_metrics(
                {
                    "yield": summary["yield"],
                    "acceptance_rate": summary["acceptance_rate"],
                    "negatives": summary["negatives"],
                    "completion_tokens": summary["completion_tokens"],
                    "tokens_per_second": summary["tokens_per_second"],
                    "pairs_per_hour": summary["pairs_per_hour"],
                    "wall_seconds": wall,
                    **{f"rejected.{k}": v for k, v in summary["rejection_reasons"].items()},
                }
            )
            run.log_artifact(target / "summary.json")

        negatives = outputs["negatives"]
        sample = negatives.head(SAMPLE_ROWS).select("query", "negative_rank", "negative")
        rejected = outputs["rejections"].filter(pl.col("reason") != "surplus").head(SAMPLE_ROWS)
        checks = negative_set_check_results(negatives, pairs, gen.min_full_share)
        return dg.MaterializeResult(
            metadata={
                "pairs": pairs.height,
                "training_pairs": all_pairs.height,
                "yield": dg.MetadataValue.float(round(summary["yield"], 4)),
                "pairs_full": summary["pairs_full"],
                "pairs_partial": summary["pairs_partial"],
                "pairs_none": summary["pairs_none"],
                "negatives": summary["negatives"],
                "completions": summary["completions"],
                "acceptance_rate": dg.MetadataValue.float(round(summary["acceptance_rate"], 4)),
                "rejection_reasons": dg.MetadataValue.md(_md_counts(summary["rejection_reasons"], "reason")),
                "parse_forms": dg.MetadataValue.md(_md_counts(summary["parse_forms"], "form")),
                "completion_tokens": summary["completion_tokens"],
                "tokens_per_second": dg.MetadataValue.float(round(summary["tokens_per_second"], 2)),
                "pairs_per_hour": dg.MetadataValue.float(round(summary["pairs_per_hour"], 1)),
                "generated_this_run": summary["this_run"]["pairs_generated"],
                "resumed_from_shards": summary["this_run"]["pairs_resumed"],
                "wall_seconds": round(wall, 2),
                "prompt": template.id,
                "signature": store.signature,
                "path": dg.MetadataValue.path(str(paths["negatives"])),
                "rejections_path": dg.MetadataValue.path(str(paths["rejections"])),
                "sample_negatives": dg.MetadataValue.md(md_table(sample.iter_rows(), sample.columns)),
                "sample_rejections": dg.MetadataValue.md(
                    md_table(rejected.select("reason", "detail", "text").iter_rows(), ["reason", "detail", "text"])
                ),
                "mlflow_run_id": run.run_id,
                "mlflow_run": dg.MetadataValue.url(run.url),
                versions.METADATA_KEY: settings_hash,
            },
            check_results=checks,
        )

    return dg.Definitions(assets=[generator_models, llm_negatives])
