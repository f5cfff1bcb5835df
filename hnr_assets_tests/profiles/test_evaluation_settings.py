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
            "baselines",
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
    assert profile.evaluation.top_k == 1000 and profile.evaluation.significance.baselines == ["base-encoder", "bm25"]
    with pytest.raises(ProfileError, match=r"key 'evaluation.topk': unknown key"):
        _load(tmp_path, "evaluation: {topk: 10}\n")
    with pytest.raises(ProfileError, match=r"key 'evaluation.precision'"):
        _load(tmp_path, "evaluation: {precision: int4}\n")


def test_references_and_baseline_must_name_systems_and_datasets_of_the_profile(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"evaluation.references.0.system: 'llm-h' is not a system"):
        _load(tmp_path, "evaluation: {references: [{system: llm-h, dataset: a, value: 0.5, source: x}]}\n")
    with pytest.raises(ProfileError, match=r"evaluation.references.0.dataset: 'b' is not a dataset"):
        _load(tmp_path, "evaluation: {references: [{system: llm-g, dataset: b, value: 0.5, source: x}]}\n")
    with pytest.raises(ProfileError, match=r"evaluation.significance.baselines.1: 'all-llms' is not a system"):
        _load(tmp_path, "evaluation: {significance: {baselines: [bm25, all-llms]}}\n")
    with pytest.raises(ProfileError, match=r"key 'evaluation.significance.baselines'"):
        _load(tmp_path, "evaluation: {significance: {baselines: []}}\n")
    with pytest.raises(ProfileError, match=r"key 'evaluation.significance.baseline': unknown key"):
        _load(tmp_path, "evaluation: {significance: {baseline: bm25}}\n")
    ok = _load(tmp_path, "evaluation: {significance: {baselines: [llm-g+ce]}}\n")
    assert ok.evaluation.significance.baselines == ["llm-g+ce"]


def test_recipes_narrow_the_grid_and_must_belong_to_it(tmp_path: Path) -> None:
    every = _load(tmp_path, "")
    assert every.recipe_keys == ["bm25", "ce", "llm-g", "llm-g+bm25", "llm-g+ce", "llm-g-filtered"]
    some = _load(tmp_path, "training: {recipes: [llm-g-filtered, bm25]}\n")
    assert some.recipe_keys == ["bm25", "llm-g-filtered"]  # the grid's order, not the file's
    with pytest.raises(ProfileError, match=r"training.recipes: 'all-llms' not in this profile's grid"):
        _load(tmp_path, "training: {recipes: [bm25, all-llms]}\n")
    with pytest.raises(ProfileError, match=r"training.recipes: repeated 'ce'"):
        _load(tmp_path, "training: {recipes: [ce, ce]}\n")
    # a significance reference outside the narrowed grid is refused
    with pytest.raises(ProfileError, match=r"baselines.1: 'bm25' is not a system"):
        _load(tmp_path, "training: {recipes: [ce]}\n")


def test_a_profile_extends_another_and_overrides_sections_key_by_key(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(BASE + "evaluation: {top_k: 50, batch_size: 4}\n")
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nname: child\nevaluation: {top_k: 10}\ndatasets: [{name: b}]\n"
        "training_pairs: {dataset: {name: b}}\n"
    )
    profile = load_profile(child)
    assert profile.name == "child" and profile.evaluation.top_k == 10 and profile.evaluation.batch_size == 4
    assert profile.dataset_names == ["b"]  # lists are replaced, not merged
    bundled = tmp_path / "mine.yaml"
    bundled.write_text("extends: local\nname: mine\ntraining: {trainer: {learning_rate: 1.0e-5}}\n")
    mine = load_profile(bundled)
    local = load_profile(BUILTIN_PROFILES_DIR / "local.yaml")
    assert mine.training.trainer.learning_rate == 1e-5
    assert mine.training.trainer.batch_size == local.training.trainer.batch_size
    assert mine.generator_keys == local.generator_keys
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ProfileError, match=r"makes a cycle"):
        load_profile(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: no-such-profile\n")
    with pytest.raises(ProfileError, match=r"no bundled profile 'no-such-profile' \(bundled: .*local"):
        load_profile(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ProfileError, match=r"missing.yaml: cannot read profile"):
        load_profile(tmp_path / "d.yaml")


def test_a_list_item_can_start_like_an_item_of_the_extended_profile(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        BASE.replace(
            "generators: [{key: g, model: m, backend: transformers}]",
            "generators: [{key: g, model: m, backend: transformers, seed: 3, sampling: {temperature: 0.5}}]",
        )
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base.yaml\nname: child\ngenerators:\n  - like: g\n"
        "  - {like: g, key: g2, seed: 4, sampling: {top_p: 0.5}}\n  - {key: h, model: n, backend: transformers}\n"
    )
    profile = load_profile(child)
    g, g2, h = profile.generators
    assert (g.key, g.seed, g.sampling.temperature) == ("g", 3, 0.5)
    assert (g2.key, g2.model, g2.seed, g2.sampling.temperature, g2.sampling.top_p) == ("g2", "m", 4, 0.5, 0.5)
    assert h.model == "n" and h.seed != 3
    child.write_text("extends: base.yaml\nname: child\ngenerators:\n  - {key: g}\n  - {like: x, key: y}\n")
    with pytest.raises(ProfileError, match=r"child.yaml: key 'generators.1.like': no item 'x' .*\(it has: g\)"):
        load_profile(child)
    (tmp_path / "root.yaml").write_text(BASE.replace("key: g,", "like: g, key: g,"))
    with pytest.raises(ProfileError, match=r"root.yaml: key 'generators.0.like': no item 'g' .*\(it has: none\)"):
        load_profile(tmp_path / "root.yaml")
