"""The `evaluation` section of the profile schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnr_assets.profiles import ProfileError, load_profile
from hnr_assets.settings import BUILTIN_PROFILES_DIR

BASE = """\
name: p
datasets: [{name: a}]
training_pairs: {dataset: {name: a}}
generators: [{key: g, model: m, backend: transformers}]
"""


def _load(tmp_path: Path, evaluation: str) -> object:
    path = tmp_path / "p.yaml"
    path.write_text(BASE + evaluation)
    return load_profile(path)


def test_builtin_profiles_set_every_evaluation_key_explicitly() -> None:
    for name in ("paper", "local", "test"):
        text = (BUILTIN_PROFILES_DIR / f"{name}.yaml").read_text()
        section = text.split("\nevaluation:\n", 1)[1]
        for key in (
            "top_k",
            "max_length",
            "batch_size",
            "precision",
            "device",
            "cache_embeddings",
            "significance",
            "baseline",
            "test",
            "correction",
            "alpha",
            "bootstrap_samples",
            "references",
        ):
            assert f"{key}:" in section, (name, key)
    local = load_profile(BUILTIN_PROFILES_DIR / "local.yaml")
    first = local.evaluation.references[0]
    assert (first.system, first.dataset, first.value) == ("bm25-retrieval", "scifact", 0.6789)


def test_defaults_and_unknown_keys(tmp_path: Path) -> None:
    profile = _load(tmp_path, "")
    assert profile.evaluation.top_k == 1000 and profile.evaluation.significance.baseline == "bm25"
    with pytest.raises(ProfileError, match=r"key 'evaluation.topk': unknown key"):
        _load(tmp_path, "evaluation: {topk: 10}\n")
    with pytest.raises(ProfileError, match=r"key 'evaluation.precision'"):
        _load(tmp_path, "evaluation: {precision: int4}\n")


def test_references_and_baseline_must_name_systems_and_datasets_of_the_profile(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"evaluation.references.0.system: 'llm-h' is not a system"):
        _load(tmp_path, "evaluation: {references: [{system: llm-h, dataset: a, value: 0.5, source: x}]}\n")
    with pytest.raises(ProfileError, match=r"evaluation.references.0.dataset: 'b' is not a dataset"):
        _load(tmp_path, "evaluation: {references: [{system: llm-g, dataset: b, value: 0.5, source: x}]}\n")
    with pytest.raises(ProfileError, match=r"evaluation.significance.baseline: 'all-llms' is not a system"):
        _load(tmp_path, "evaluation: {significance: {baseline: all-llms}}\n")
    ok = _load(tmp_path, "evaluation: {significance: {baseline: llm-g+ce}}\n")
    assert ok.evaluation.significance.baseline == "llm-g+ce"
