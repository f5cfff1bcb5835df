"""`generator_models` and `llm_negatives` with the `ctranslate2` backend on a real Dagster instance: the
tiny random causal LM converted once (in `generator_models`, kept in the data root's model cache), then
sampled, validated, written in shards and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from hnr_assets.definitions import build_defs
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings
from hnr_assets_tests.defs.test_generation import _run


@pytest.mark.slow
def test_ctranslate2_generator_end_to_end(tmp_path: Path, tiny_mirror: Path) -> None:
    profile = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text())
    profile["generators"] = [
        {
            "key": "tiny-ct2",
            "model": "tiny-random",
            "backend": "ctranslate2",
            "prompt": "single-v1",
            "completions": 4,
            "max_attempts": 2,
            "retry_factor": 0.5,
            "batch_size": 16,
            "pairs_per_shard": 10,
            "sampling": {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 16},
            "engine_options": {"workers": 2, "threads_per_worker": 1},
        }
    ]
    path = tmp_path / "ct2.yaml"
    path.write_text(yaml.safe_dump(profile))
    data = tmp_path / "data"
    settings = Settings.from_env(
        {"HNR_PROFILE": str(path), "HNR_DATA_DIR": str(data), "HNR_DATASETS_DIR": str(tiny_mirror)}
    )
    defs = build_defs(settings)
    instance = dg.DagsterInstance.ephemeral()
    _run(defs, instance, "training_pairs")

    model_meta, _ = _run(defs, instance, "generator_models", "tiny-ct2")
    model = json.loads((data / "test" / "generator_models" / "tiny-ct2" / "model.json").read_text())
    converted = Path(model["engine"]["ctranslate2"]["path"])
    assert converted.parent == data / "models" / "ctranslate2" and (converted / "model.bin").is_file()
    assert model["engine"]["ctranslate2"]["quantization"] == "int8"
    assert model_meta["ctranslate2_files"] == str(converted)

    meta, checks = _run(defs, instance, "llm_negatives", "tiny-ct2")
    out = data / "test" / "llm_negatives" / "tiny-ct2"
    stats = pl.read_parquet(out / "pair_stats.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert meta["pairs"] == stats.height == 24 and meta["pairs_full"] == 0  # gibberish is rejected
    assert summary["backend"] == "ctranslate2" and meta["completion_tokens"] > 0
    # 4 completions on the first attempt, then ceil(0.5 x missing) <= 3 on the retry.
    assert stats["attempts"].to_list() == [2] * 24 and stats["completions"].max() <= 4 + 3
    assert checks["schema"].passed and not checks["full_coverage"].passed
    assert len(list(converted.parent.glob("*-int8"))) == 1  # llm_negatives found the conversion, made none

    meta, _ = _run(defs, instance, "llm_negatives", "tiny-ct2")
    assert (meta["generated_this_run"], meta["resumed_from_shards"]) == (0, 24)
