"""Rate probes inside the assets (`runtime.rate_probes`): each heavy asset measures its own code path and
a bare baseline on a sample of its data, and records both in its metadata and on its MLflow run.

Tiny real models built in the run; the rates mean nothing here, the code paths are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from hnr_assets.definitions import build_defs
from hnr_assets.lib.generation.runner import RunReport, probe_generation
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings
from hnr_assets_tests.conftest import materialize, metadata
from hnr_assets_tests.defs.test_evaluation import PROFILE, _upstream
from hnr_assets_tests.encoder_fixtures import make_tiny_encoder
from hnr_assets_tests.fixtures import make_tiny_dataset
from hnr_assets_tests.training_fixtures import write_negative_sets

pytestmark = pytest.mark.slow

PROBES = {"enabled": True, "encode_passages": 12, "search_queries": 5, "ce_pairs": 16, "generation_pairs": 2}


def _check(meta: dict, stage: str, baseline: str, *, unit: str) -> None:
    """The probe's keys are there, its rates are measured and positive, its baseline is named."""
    base = f"rate/{stage}/"
    assert meta[base + "unit"] == unit
    assert baseline in meta[base + "baseline_name"]
    assert meta[base + "sample"] > 0
    assert meta[base + "hnr"] > 0 and meta[base + "baseline"] > 0, meta
    assert meta[base + "ratio"] == pytest.approx(meta[base + "hnr"] / meta[base + "baseline"], rel=1e-3)
    assert stage in meta["rate/stages"].split(",")


def _mlflow_values(defs: dg.Definitions, run_id: str) -> tuple[dict, dict]:
    run = defs.resources["mlflow"].client().get_run(run_id)
    return run.data.metrics, run.data.tags


def test_scores_probe_encoding_and_search(tmp_path: Path, tiny_mirror: Path) -> None:
    profile = tmp_path / "evaltest.yaml"
    profile.write_text(
        PROFILE % {"top_k": 1000, "bm25_depth": 1000} + yaml.safe_dump({"runtime": {"rate_probes": PROBES}})
    )
    settings = Settings.from_env(
        {"HNR_PROFILE": str(profile), "HNR_DATA_DIR": str(tmp_path / "data"), "HNR_DATASETS_DIR": str(tiny_mirror)}
    )
    defs = build_defs(settings)
    models = {seed: make_tiny_encoder(tmp_path / "models" / f"seed{seed}", seed=seed) for seed in (0, 1, 2)}
    run_ids = _upstream(settings, defs, models, recipes=["bm25"])
    meta = metadata(materialize(defs, "scores", "tiny-a|bm25"), "scores")
    _check(meta, "encoding", "sentence-transformers encode (fp32", unit="passages/s")
    _check(meta, "search", "beir DenseRetrievalExactSearch", unit="queries/s")
    assert meta["rate/encoding/sample"] == 12 and meta["rate/search/sample"] == 5
    metrics, tags = _mlflow_values(defs, run_ids["bm25"])
    assert metrics["eval/tiny-a/rate/encoding/hnr"] == meta["rate/encoding/hnr"]
    assert tags["eval/tiny-a/rate/search/baseline_name"] == meta["rate/search/baseline_name"]
    # BM25 retrieval has no dense step: no probe.
    assert not any(
        k.startswith("rate/") for k in metadata(materialize(defs, "scores", "tiny-a|bm25-retrieval"), "scores")
    )


def _probing(tmp_path: Path, docs_per_topic: int = 4) -> Settings:
    """The `test` profile with the probes on, over a fresh tiny mirror."""
    mirror = tmp_path / "mirror"
    make_tiny_dataset(mirror / "tiny-a", seed=1, docs_per_topic=docs_per_topic)
    make_tiny_dataset(mirror / "tiny-b", seed=2, prefix="b")
    data = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text())
    data["runtime"] = {"rate_probes": PROBES}
    path = tmp_path / "probing.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return Settings.from_env(
        {"HNR_PROFILE": str(path), "HNR_DATA_DIR": str(tmp_path / "data"), "HNR_DATASETS_DIR": str(mirror)}
    )


def test_ce_negatives_probe_cross_encoder_scoring(tmp_path: Path) -> None:
    defs = build_defs(_probing(tmp_path, docs_per_topic=10))
    instance = dg.DagsterInstance.ephemeral()
    for asset in ("training_pairs", "bm25_index", "cross_encoder"):
        assert materialize(defs, asset, instance=instance).success
    meta = metadata(materialize(defs, "ce_negatives", instance=instance), "ce_negatives")
    _check(meta, "ce_scoring", "sentence-transformers CrossEncoder fp32", unit="pairs/s")
    assert "random weights" in meta["rate/ce_scoring/baseline_name"]
    assert meta["rate/ce_scoring/sample"] == 16
    metrics, tags = _mlflow_values(defs, meta["mlflow_run_id"])
    assert metrics["rate/ce_scoring/ratio"] == meta["rate/ce_scoring/ratio"]
    assert tags["rate/ce_scoring/hnr_name"].startswith("hnr torch scorer")


def test_llm_negatives_probe_generation_and_says_when_nothing_was_generated(tmp_path: Path) -> None:
    defs = build_defs(_probing(tmp_path))
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(defs, "training_pairs", instance=instance).success
    assert materialize(defs, "generator_models", "tiny-lm-b", instance=instance).success
    meta = metadata(materialize(defs, "llm_negatives", "tiny-lm-b", instance=instance), "llm_negatives")
    base = "rate/generation/"
    assert meta[base + "unit"] == "valid negatives/s" and meta[base + "sample"] == 2
    assert "transformers fp32, 2 threads, batch 36" in meta[base + "baseline_name"]
    # A tiny random LM writes gibberish that validation rejects: both rates are measured, and 0.
    assert meta[base + "hnr"] >= 0 and meta[base + "baseline"] >= 0
    assert (base + "ratio" in meta) == (meta[base + "baseline"] > 0)
    metrics, _ = _mlflow_values(defs, meta["mlflow_run_id"])
    assert metrics[base + "hnr"] == meta[base + "hnr"]
    again = metadata(materialize(defs, "llm_negatives", "tiny-lm-b", instance=instance), "llm_negatives")
    assert "nothing was generated" in again[base + "skipped"] and base + "hnr" not in again


def test_generation_probe_of_a_served_model_records_that_no_baseline_applies(tmp_path: Path) -> None:
    report = RunReport(pairs_generated=4, negatives=20, generate_seconds=2.0)
    probe = probe_generation(report, "hnr openai", None, None, None, tmp_path)  # nothing else is touched
    assert probe.hnr_rate == 10.0 and probe.baseline_rate is None and probe.ratio is None
    assert probe.skipped == "served over HTTP: no local baseline applies"


def test_encoders_probe_training(tmp_path: Path) -> None:
    settings = _probing(tmp_path)
    defs = build_defs(settings)
    instance = dg.DagsterInstance.ephemeral()
    for asset in ("training_pairs", "base_encoder"):
        assert materialize(defs, asset, instance=instance).success
    write_negative_sets(settings.data_dir / "test", ["tiny-lm-a", "tiny-lm-b"])
    assert materialize(defs, "training_sets", "bm25", instance=instance).success
    meta = metadata(materialize(defs, "encoders", "bm25", instance=instance), "encoders")
    _check(meta, "training", "sentence-transformers trainer fp32, MNRL", unit="examples/s")
    assert meta["rate/training/hnr"] == pytest.approx(meta["examples_per_second"], abs=0.01)
    metrics, _ = _mlflow_values(defs, meta["mlflow_run_id"])
    assert metrics["rate/training/baseline"] == meta["rate/training/baseline"]
