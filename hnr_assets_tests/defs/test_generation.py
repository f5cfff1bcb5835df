"""`generator_models` and `llm_negatives` on a real (ephemeral) Dagster instance.

The `test` profile's generators are tiny random causal LMs: their output is gibberish, which must be
rejected with reasons, retried a bounded number of times, and reported as the yield it is. A second
profile points a generator at a real OpenAI-compatible server on 127.0.0.1, whose answers are valid.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from hnr_assets.definitions import build_defs
from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings
from hnr_assets_tests.openai_server import FakeOpenAIServer


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    result = dg.materialize(
        defs.assets,
        selection=[asset],
        partition_key=partition,
        resources=defs.resources,
        instance=instance,
        raise_on_error=True,
    )
    (mat,) = result.asset_materializations_for_node(asset)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    return {k: v.value for k, v in mat.metadata.items()}, checks


def test_generation_assets_and_partitions(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    for name in ("generator_models", "llm_negatives"):
        assert list(defs.resolve_assets_def(name).partitions_def.get_partition_keys()) == ["tiny-lm-a", "tiny-lm-b"]
    checks = {k.name for k in defs.resolve_assets_def("llm_negatives").check_keys}
    assert checks == {"schema", "not_positive", "distinct", "full_coverage"}


@pytest.mark.slow
def test_tiny_random_generators_end_to_end(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    instance = dg.DagsterInstance.ephemeral()
    _run(defs, instance, "training_pairs")
    root = test_settings.data_dir / "test"
    profile_attempts = {"tiny-lm-a": 2, "tiny-lm-b": 2}
    for key in ("tiny-lm-a", "tiny-lm-b"):
        model_meta, _ = _run(defs, instance, "generator_models", key)
        assert model_meta["source"] == "tiny-random" and model_meta["parameters"] > 0
        meta, checks = _run(defs, instance, "llm_negatives", key)
        out = root / "llm_negatives" / key
        negatives = pl.read_parquet(out / "negatives.parquet")
        stats = pl.read_parquet(out / "pair_stats.parquet")
        rejections = pl.read_parquet(out / "rejections.parquet")
        completions = pl.read_parquet(sorted(out.glob("shards/*/shard-*/completions.parquet")))
        assert not (out / "completions.parquet").exists() and completions["text"].null_count() == 0
        summary = json.loads((out / "summary.json").read_text())

        # Gibberish is rejected: no pair gets its five negatives, and the yield says so.
        assert dict(negatives.schema) == NEGATIVES_SCHEMA
        assert meta["pairs"] == stats.height == 24 and meta["pairs_full"] == 0
        assert meta["yield"] == summary["yield"] == stats.filter(pl.col("negatives") >= 5).height / 24 == 0.0
        assert meta["negatives"] == negatives.height == stats["negatives"].sum()
        # Retries stop at the bound: every pair used all its attempts and no more.
        assert stats["attempts"].to_list() == [profile_attempts[key]] * 24
        # Every completion is accounted for: each candidate kept or rejected with a reason.
        assert (
            completions["candidates"].sum()
            == completions["accepted"].sum() + rejections.filter(pl.col("item") > 0).height
        )
        assert (
            rejections.filter(pl.col("reason") == "no_passage").height
            == completions.filter(pl.col("candidates") == 0).height
        )
        assert set(rejections["reason"]) <= {"no_passage", "empty", "too_short", "not_prose", "repetitive", "duplicate"}
        assert rejections["reason"].null_count() == 0 and set(summary["rejection_reasons"]) == set(rejections["reason"])
        assert "| reason | count | meaning |" in meta["rejection_reasons"]
        assert meta["completion_tokens"] > 0 and meta["tokens_per_second"] > 0
        assert meta["mlflow_run_id"] and meta["mlflow_run"].startswith("http")
        # Contract checks pass on whatever was kept; the yield gate fails as a WARN.
        assert checks["not_positive"].passed and checks["schema"].passed and checks["distinct"].passed
        assert not checks["full_coverage"].passed
        assert checks["full_coverage"].severity == dg.AssetCheckSeverity.WARN

    # A second materialization resumes from the shards: nothing is generated again.
    meta, _ = _run(defs, instance, "llm_negatives", "tiny-lm-a")
    assert (meta["generated_this_run"], meta["resumed_from_shards"]) == (0, 24)


@pytest.mark.slow
def test_openai_generator_end_to_end(tmp_path: Path, tiny_mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HNR_GENERATOR_API_KEY", "sk-e2e-secret")
    profile = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text())
    with FakeOpenAIServer(model="served-model") as server:
        profile["generators"] = [
            {"key": "served", "model": "served-model", "backend": "openai", "prompt": "v1"},  # OPENAI_BASE_URL
            {"key": "unknown", "model": "not-served", "backend": "openai", "endpoint": server.url},
        ]
        profile["generation"]["max_pairs"] = 10
        path = tmp_path / "served.yaml"
        path.write_text(yaml.safe_dump(profile))
        settings = Settings.from_env(
            {
                "HNR_PROFILE": str(path),
                "HNR_DATA_DIR": str(tmp_path / "data"),
                "HNR_DATASETS_DIR": str(tiny_mirror),
                "HNR_GENERATOR_API_KEY": "sk-e2e-secret",
                "OPENAI_BASE_URL": server.url,
            }
        )
        defs = build_defs(settings)
        # The key reaches Dagster as an environment-variable reference, not as a value.
        assert "sk-e2e-secret" not in repr(defs.resources["generator_backends"])
        instance = dg.DagsterInstance.ephemeral()
        _run(defs, instance, "training_pairs")
        model_meta, _ = _run(defs, instance, "generator_models", "served")
        meta, checks = _run(defs, instance, "llm_negatives", "served")
        with pytest.raises(Exception, match=r"does not serve 'not-served'"):
            _run(defs, instance, "generator_models", "unknown")
    assert {b["_headers"]["Authorization"] for b in server.requests} == {"Bearer sk-e2e-secret"}
    assert model_meta["source"] == "served" and model_meta["weights"] == "served"
    assert (meta["pairs"], meta["training_pairs"], meta["yield"], meta["negatives"]) == (10, 24, 1.0, 50)
    assert all(c.passed for c in checks.values())
    assert "| query | negative_rank | negative |" in meta["sample_negatives"]
