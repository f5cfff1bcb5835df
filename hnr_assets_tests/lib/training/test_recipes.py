"""The recipe grid derived from the generator list."""

from __future__ import annotations

import pytest

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.training.recipes import derive_recipes


def test_study_grid_for_four_generators() -> None:
    keys = [r.key for r in derive_recipes(["qwen3-4b", "qwen3-30b-a3b", "llama3.1-8b", "phi4-14b"])]
    assert keys[:5] == ["bm25", "ce", "llm-qwen3-4b", "llm-qwen3-4b+bm25", "llm-qwen3-4b+ce"]
    assert {"all-llms", "all-llms+bm25", "all-llms+ce", "all-llms-filtered", "llm-phi4-14b-filtered"} <= set(keys)
    assert len(keys) == len(set(keys)) == 2 + 4 * 3 + 3 + 4 + 1
    assert all(not any(c in k for c in "|,[]/") for k in keys)


def test_single_generator_has_no_all_llms() -> None:
    recipes = {r.key: r for r in derive_recipes(["g"])}
    assert "all-llms" not in recipes
    assert recipes["llm-g+ce"].sources == ("llm-g", "ce")
    assert recipes["llm-g-filtered"].ce_filtered and not recipes["llm-g-filtered"].in_study


def test_bad_generator_key() -> None:
    with pytest.raises(ConfigError, match="invalid generator key"):
        derive_recipes(["a|b"])
