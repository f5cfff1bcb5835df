"""What each asset's output depends on, and the hashes that tell whether a stored output is current.

One table, `VERSIONS`, says for every asset which profile settings its output depends on: the sections
shared by all of its partitions, and, for partitioned assets, the partition's own entry (one dataset's
source, one generator's settings, one recipe's sources). Settings whose value names something outside
the profile are followed to what they name (`REFERENCES`: a `package:` model's installed version, a
prompt template's file). Settings that cannot change any output are on `LEFT_OUT`, each with its reason.
A test fails when the profile schema has a setting that no asset covers and that is not left out
(`uncovered`), so a new section or field must be placed in the table or on that list.

Two hashes come from the table (docs/code-versions.md explains them for users):

- `code_version(profile, asset)`: the asset's Dagster code version, `<logic>+<12 hex digits>`: the
  hand-bumped version of its code and a hash of its shared settings. Dagster marks a materialization
  stale when its recorded code version differs ("has a new code version"), so editing any of them
  shows the asset stale in the UI, and its dependents once it is rematerialized.
- `settings_hash(profile, asset, partition)`: the same plus the partition's own entry, recorded on each
  materialization as metadata `settings_hash` (and on its MLflow run as the tag `hnr/settings_hash`).
  Dagster's code versions are per asset, so a change of one generator's settings cannot be shown as a
  new code version of that partition alone: the demo's skip test (`hnr_assets.cli`) compares this
  hash, so it reruns exactly the partition that changed.

Values are hashed as the profile's JSON without default values (`exclude_defaults`), so that a new setting
added with a default leaves existing outputs current, and a value written out that equals the default
is the same as leaving it out. A changed default in `profiles/schema.py` therefore changes no hash: bump
the logic version of the assets that read it. A profile's `extends:` is resolved by
`profiles.load_profile` before validation, so it is no setting here: the merged profile is what is hashed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import dagster as dg
from pydantic import BaseModel

from hnr_assets.defs.partitions import recipes
from hnr_assets.lib.generation.prompts import load_prompt
from hnr_assets.lib.runtime.models import PACKAGE_PREFIX
from hnr_assets.profiles.schema import Profile

# Metadata key of every materialization (`execution.hnr_asset` records it), and key of the Definitions
# metadata that holds the current per-partition hashes for the demo. The MLflow tag is
# `resources.mlflow.TAG_SETTINGS_HASH`.
METADATA_KEY = "settings_hash"
DEFINITIONS_KEY = "hnr/settings_hash_by_partition"


@dataclass(frozen=True)
class Covers:
    """What one asset's version covers.

    Paths are dotted profile paths: `bm25`, `mining.bm25_negatives.last_rank`. In a list of named entries
    (`datasets`, `generators`), `generators[]` is the entry of the partition being versioned and
    `generators[*].key` the key of every entry.

    Attributes:
        logic: Version of the asset's code; bump it when the code changes what the asset writes.
        settings: Settings shared by every partition (in the Dagster code version).
        partition: The partition's own settings (in the per-partition hash only).
        unused: Paths below `settings` or `partition` that this asset does not read.
        recipe: The per-partition hash includes the recipe's sources (partitions are recipes).
    """

    logic: str
    settings: tuple[str, ...] = ()
    partition: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    recipe: bool = False


# Every asset's files live under `<data root>/<name>/` and its MLflow runs in experiment `hnr-<name>`.
COMMON = ("name",)
BM25_SEARCH = ("bm25",)  # the engine, its parameters and analyzer; `threads` and `java_heap` are LEFT_OUT

VERSIONS: dict[str, Covers] = {
    # datasets: the source of each dataset (mirror, path or download, split).
    "datasets": Covers("1", partition=("datasets[]",)),
    "training_pairs": Covers("1", settings=("training_pairs",)),
    # mining: the index and every search read the engine's parameters.
    "bm25_index": Covers("1", settings=BM25_SEARCH, unused=("bm25.scores_depth",)),
    "bm25_negatives": Covers("1", settings=(*BM25_SEARCH, "mining.bm25_negatives"), unused=("bm25.scores_depth",)),
    "cross_encoder": Covers("1", settings=("cross_encoder",)),
    # logic 2: retrieval_ranks.parquet beside the negatives (issue 17: mined in blocks of queries).
    "ce_negatives": Covers(
        "2", settings=(*BM25_SEARCH, "cross_encoder", "mining.ce_negatives"), unused=("bm25.scores_depth",)
    ),
    # `prebuilt_index` replaces the training corpus's index only; each dataset gets its own.
    "bm25_scores": Covers("1", settings=BM25_SEARCH, unused=("bm25.prebuilt_index",)),
    # generation: the weights depend on where they come from (the seed builds `tiny-random` weights);
    # logic 2: the backend's own copy is prepared here too (CTranslate2 converts with `quantization`).
    "generator_models": Covers(
        "2",
        partition=(
            "generators[].model",
            "generators[].backend",
            "generators[].endpoint",
            "generators[].seed",
            "generators[].engine_options.quantization",
        ),
    ),
    # Every setting of the generator, `engine_options` included, unless on LEFT_OUT. Covered on purpose:
    # `retry_factor` (how many completions a retry asks for, so which are written); for `ctranslate2`,
    # `quantization` and `compute_type` (other weights and activations, other logits), `workers` (each
    # worker samples from its own seed, `call_seed(requests, worker)`, and takes every `workers`-th
    # request: another count gives other completions) and `threads_per_worker` (another split of each
    # matrix product: other rounding, so a sampled token may differ); all five are in the backend's
    # generation signature (`describe`) too. `compute_type: auto` is hashed as written, not as resolved
    # on this CPU (docs/code-versions.md, "Limits").
    "llm_negatives": Covers("1", settings=("generation",), partition=("generators[]",)),
    # training: the cross-encoder's runtime settings score the LLM negatives.
    "llm_negatives_ce_scores": Covers("1", settings=("cross_encoder",)),
    # With `same_queries` every recipe keeps the pairs that all negative sets cover: the generator list.
    "training_sets": Covers("1", settings=("training.sets", "generators[*].key"), recipe=True),
    "base_encoder": Covers("1", settings=("training.base_encoder",)),
    "encoders": Covers("1", settings=("training.trainer",)),
    # evaluation
    "scores": Covers("1", settings=("evaluation",), unused=("evaluation.significance",)),
    # The table has a row per system (the generators' grid narrowed by `training.recipes`: also the family
    # of each significance correction) and a column per dataset; `results.md` opens with the description.
    "results": Covers(
        "1",
        settings=(
            "description",
            "evaluation.significance",
            "training.recipes",
            "datasets[*].name",
            "generators[*].key",
        ),
    ),
}

_THREADS = "thread count: the same output, faster or slower"
_TRUST = "permission to run the model's own code: the same model loads, or the run fails"
_WARN = "threshold of a WARN check: changes no output (checks are evaluated again at the next materialization)"
_SHARDS = "not in the generation signature (lib.generation): a rerun would reuse every written shard"
_REQUESTS = "how requests to a served model are sent and retried: the same completions"

# Settings no output depends on. `generators[].engine_options.<name>` are keys of that free-form mapping.
LEFT_OUT: dict[str, str] = {
    "bm25.threads": _THREADS,
    "bm25.java_heap": "JVM memory ceiling: a run fits or fails, with the same hits",
    "cross_encoder.batch_size": "pairs per forward pass: padding is masked, the same scores",
    "cross_encoder.threads": _THREADS,
    "cross_encoder.trust_remote_code": _TRUST,
    # Batching may change which random draws a sequence gets, but a rerun would write the same files.
    "generators[].batch_size": "sequences per forward pass; " + _SHARDS,
    "generators[].pairs_per_shard": "pairs per resumable shard; " + _SHARDS,
    "generators[].trust_remote_code": _TRUST,
    "generators[].engine_options.torch_threads": _THREADS,
    "generators[].engine_options.device": "where the model runs; " + _SHARDS,
    "generators[].engine_options.tensor_parallel_size": "GPUs one vLLM model is split over; " + _SHARDS,
    "generators[].engine_options.gpu_memory_utilization": "vLLM's share of GPU memory; " + _SHARDS,
    "generators[].engine_options.enforce_eager": "vLLM without CUDA graphs; " + _SHARDS,
    "generators[].engine_options.seed": "vLLM's engine seed: every request carries its own seed",
    "generators[].engine_options.cache_dir": "where CTranslate2's converted copies live: the same copy, keyed by "
    "its source's content and quantization",
    "generators[].engine_options.api_key": "credentials of a served model: the same server and model",
    "generators[].engine_options.concurrency": _REQUESTS,
    "generators[].engine_options.timeout_seconds": _REQUESTS,
    "generators[].engine_options.connect_timeout_seconds": _REQUESTS,
    "generators[].engine_options.max_retries": _REQUESTS,
    "generators[].engine_options.backoff_seconds": _REQUESTS,
    "generators[].engine_options.backoff_cap_seconds": _REQUESTS,
    "generation.min_full_share": _WARN,
    "mining.min_full_share": _WARN,
    "evaluation.references": "published scores for the WARN check `reference_scores` of `results`; " + _WARN,
    "evaluation.significance.min_recipes_beating_base": "the WARN check `recipes_beat_base_encoder`; " + _WARN,
    "evaluation.batch_size": "texts per forward pass: the embedding cache shares embeddings across batch sizes",
    "evaluation.device": "where encoding runs: the embedding cache shares embeddings across devices",
    "evaluation.cache_embeddings": "a cache of embeddings that are the same either way",
    "training.base_encoder.trust_remote_code": _TRUST,
    "training.trainer.logging_steps": "how often the loss is logged: the same training",
    "training.trainer.eval_batch_size": "texts per batch when validating: the same scores",
    "runtime.rate_probes": "side-by-side speed probes run after an asset's work, on copies of a sample: "
    "they add metadata and MLflow metrics, the outputs are the same",
}

# The entries of these lists are partitions, named by this field.
LIST_KEYS = {"datasets": "name", "generators": "key"}


def _package_version(value: object) -> str | None:
    """`package:<dist>[/folder]` -> `<dist>==<installed version>`; other references are their own value."""
    if not isinstance(value, str) or not value.startswith(PACKAGE_PREFIX):
        return None
    dist = value.removeprefix(PACKAGE_PREFIX).split("/", 1)[0]
    try:
        return f"{dist}=={importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} (not installed)"


def _prompt_file(value: object) -> str | None:
    """A prompt template id -> the sha256 of its file's bytes."""
    return hashlib.sha256(load_prompt(str(value)).path.read_bytes()).hexdigest()


# Settings that name something outside the profile, and what of it is hashed beside the name. A hub id
# is versioned by its `revision` setting (a sibling in the same section); without one, the hub's main
# branch can move unnoticed. An absolute folder is versioned by its path, not its content.
REFERENCES: dict[str, Callable[[object], str | None]] = {
    "cross_encoder.model": _package_version,
    "training.base_encoder.model": _package_version,
    "generators[].model": _package_version,
    "generators[].prompt": _prompt_file,
}


# ------------------------------------------------------------------------------------------- hashing


def code_version(profile: Profile, asset: str) -> str:
    """The asset's Dagster code version: its logic version and a hash of the settings all partitions share.

    Args:
        profile: The active profile.
        asset: Asset name (a key of `VERSIONS`).

    Returns:
        `<logic>+<12 hex digits>`.
    """
    covers = VERSIONS[asset]
    return f"{covers.logic}+{_digest(_payload(profile, covers, (*COMMON, *covers.settings), None, {}))}"


def settings_hash(
    profile: Profile,
    asset: str,
    partition: str | dg.MultiPartitionKey | None = None,
    used: Mapping[str, BaseModel] | None = None,
) -> str:
    """The hash of the settings one partition's output depends on, as recorded on its materialization.

    Equal to `code_version` for an asset without settings of its own per partition, unless `used`
    replaces a section (a run whose launchpad config differs from the profile records what it ran with).

    Args:
        profile: The active profile.
        asset: Asset name.
        partition: Partition key (None for unpartitioned assets).
        used: Sections as the run actually used them, by path (e.g. `{"training.trainer": settings}`).

    Returns:
        `<logic>+<12 hex digits>`.
    """
    covers = VERSIONS[asset]
    used = dict(used or {})
    payload = _payload(profile, covers, (*COMMON, *covers.settings), None, used)
    if covers.partition:
        payload.update(_payload(profile, covers, covers.partition, str(partition), used))
    if covers.recipe:
        recipe = {r.key: r for r in recipes(profile)}[str(partition)]
        payload["recipe"] = {"sources": list(recipe.sources), "ce_filtered": recipe.ce_filtered}
    return f"{covers.logic}+{_digest(payload)}"


def partition_hashes(profile: Profile) -> dict[str, dict[str, str]]:
    """`{asset: {partition: settings_hash}}` for every asset whose partitions have settings of their own."""
    from hnr_assets.defs.partitions import dataset_partitions, generator_partitions, recipe_partitions

    axes = {
        "datasets": dataset_partitions(profile),
        "generators": generator_partitions(profile),
        "recipes": recipe_partitions(profile),
    }
    out: dict[str, dict[str, str]] = {}
    for asset, covers in VERSIONS.items():
        if covers.recipe:
            keys = axes["recipes"].get_partition_keys()
        elif covers.partition:
            keys = axes[covers.partition[0].split("[", 1)[0]].get_partition_keys()
        else:
            continue
        out[asset] = {key: settings_hash(profile, asset, key) for key in keys}
    return out


def definitions_metadata(profile: Profile) -> dict[str, object]:
    """Metadata of the `Definitions`: the current per-partition hashes, which the demo compares."""
    return {DEFINITIONS_KEY: dg.MetadataValue.json(partition_hashes(profile))}


def current_hash(defs: dg.Definitions, node, partition: str | None) -> str | None:
    """The hash a current materialization of an asset node (`partition`) records, per `defs`.

    The per-partition hash where the asset has one (`definitions_metadata`), else its code version.
    """
    entry = (defs.metadata or {}).get(DEFINITIONS_KEY)
    table = entry.value if isinstance(entry, dg.JsonMetadataValue) else {}
    by_partition = table.get(node.key.to_user_string(), {}) if isinstance(table, dict) else {}
    return by_partition.get(str(partition), node.code_version) if partition is not None else node.code_version


def recorded_hash(materialization: dg.AssetMaterialization | None) -> str | None:
    """The `settings_hash` a materialization recorded (None when it predates them)."""
    value = (materialization.metadata or {}).get(METADATA_KEY) if materialization else None
    return None if value is None else str(getattr(value, "value", value))


def _digest(payload: dict) -> str:
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(data).hexdigest()[:12]


def _payload(
    profile: Profile, covers: Covers, paths: tuple[str, ...], partition: str | None, used: dict[str, BaseModel]
) -> dict[str, object]:
    """`{path: value}` for each path (values without defaults, left-out and unused settings removed), and
    `{"ref:<path>": ...}` for each reference below them."""
    dumped = profile.model_dump(mode="json", exclude_defaults=True)
    dropped = [*LEFT_OUT, *covers.unused]
    out: dict[str, object] = {}
    for path in paths:
        norm = _norm(path)
        if path in used:
            value = used[path].model_dump(mode="json", exclude_defaults=True)
        else:
            value = _select(dumped, path.split("."), partition)
        value = _prune(_drop(value, [p[len(norm) + 1 :] for p in dropped if p.startswith(norm + ".")]))
        if value is not None:
            out[path] = value
        for ref, resolve in REFERENCES.items():
            if (ref == norm or ref.startswith(norm + ".")) and ref not in dropped:
                root, rest = (used[path], ref[len(norm) + 1 :]) if path in used else (profile, ref)
                named = resolve(_attribute(root, rest.split(".") if rest else [], partition))
                if named is not None:
                    out[f"ref:{ref}"] = named
    return out


def _norm(path: str) -> str:
    return path.replace("[*]", "[]")


def _select(value: object, parts: list[str], partition: str | None) -> object:
    """The value at the path `parts` in the profile's dumped JSON (None when it is all defaults)."""
    for number, part in enumerate(parts):
        name, _, index = part.partition("[")
        value = value.get(name) if isinstance(value, dict) else None
        if index == "]":  # the partition's entry
            value = next((e for e in value or [] if e.get(LIST_KEYS[name]) == partition), None)
        elif index == "*]":  # every entry: the rest of the path applies to each
            return [_select(entry, parts[number + 1 :], partition) for entry in value or []]
    return value


def _attribute(value: object, parts: list[str], partition: str | None) -> object:
    """The value (defaults included) at the path `parts` of a profile or section object."""
    for part in parts:
        name, _, index = part.partition("[")
        value = getattr(value, name)
        if index == "]":
            value = next(e for e in value if getattr(e, LIST_KEYS[name]) == partition)
    return value


def _drop(value: object, paths: list[str]) -> object:
    """A copy of `value` without the dotted `paths` (applied to every element of a list)."""
    if not paths or value is None:
        return value
    if isinstance(value, list):
        return [_drop(v, paths) for v in value]
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for path in paths:
        head, _, rest = path.partition(".")
        name = head.removesuffix("[]")
        if name not in out:
            continue
        if rest:
            out[name] = _drop(out[name], [rest])
        else:
            del out[name]
    return out


def _prune(value: object) -> object:
    """Empty mappings count as absent (an all-default section, or one whose only settings were left out)."""
    if isinstance(value, dict):
        pruned = {k: p for k, v in value.items() if (p := _prune(v)) is not None}
        return pruned or None
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


# --------------------------------------------------------------------------------------- the schema


def schema_paths(model: type[BaseModel] = Profile, prefix: str = "") -> Iterator[tuple[str, bool]]:
    """Every setting of a profile schema as `(path, is_leaf)`: sections and their fields, `[]` for lists
    of entries; free-form mappings (`engine_options`) are leaves."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        inner, is_list = _model_of(info.annotation)
        if inner is None:
            yield path, True
            continue
        path += "[]" if is_list else ""
        yield path, False
        yield from schema_paths(inner, path + ".")


def _model_of(annotation: object) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside an annotation (`X`, `X | None`, `list[X]`), and whether it is a list."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin is list:
        inner, _ = _model_of(typing.get_args(annotation)[0])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            inner, is_list = _model_of(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def table_problems(model: type[BaseModel] = Profile) -> list[str]:
    """Paths of the table that name no setting of the schema, and settings both covered and left out."""
    nodes = dict(schema_paths(model))
    free = {p for p, leaf in nodes.items() if leaf}

    def known(path: str) -> bool:
        path = _norm(path)
        return path in nodes or f"{path}[]" in nodes or any(path.startswith(f + ".") for f in free)

    problems = [f"LEFT_OUT: {p!r} is not a setting" for p in LEFT_OUT if not known(p)]
    problems += [f"LEFT_OUT: {p!r} has no reason" for p, why in LEFT_OUT.items() if not why.strip()]
    problems += [f"REFERENCES: {p!r} is not a setting" for p in REFERENCES if not known(p)]
    for asset, covers in VERSIONS.items():
        for path in (*covers.settings, *covers.partition, *covers.unused):
            if not known(path):
                problems.append(f"{asset}: {path!r} is not a setting")
        for path in (*covers.settings, *covers.partition):
            if _norm(path) in LEFT_OUT:
                problems.append(f"{asset}: {path!r} is covered and on LEFT_OUT")
    return problems


def uncovered(model: type[BaseModel] = Profile) -> list[str]:
    """Settings of the schema that no asset's version covers and that are not on `LEFT_OUT`."""

    def under(path: str, prefixes: tuple[str, ...] | list[str]) -> bool:
        return any(path == _norm(p) or path.startswith((_norm(p) + ".", _norm(p) + "[].")) for p in prefixes)

    def covered(path: str) -> bool:
        return any(
            under(path, (*COMMON, *c.settings, *c.partition)) and not under(path, c.unused) for c in VERSIONS.values()
        )

    return [
        path for path, leaf in schema_paths(model) if leaf and not covered(path) and not under(path, list(LEFT_OUT))
    ]
