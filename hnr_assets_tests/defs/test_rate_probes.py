"""Rate probes inside the assets (`runtime.rate_probes`): each heavy asset measures its own code path and
a bare baseline on a sample of its data, and records both in its metadata and on its MLflow run.

Tiny real models built in the run; the rates mean nothing here, the code paths are the real ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hnr_assets.definitions import build_defs
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings
from hnr_assets_tests.conftest import materialize, metadata
from hnr_assets_tests.defs.test_evaluation import PROFILE, _upstream
from hnr_assets_tests.encoder_fixtures import make_tiny_encoder

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
    profile.write_text(PROFILE % {"top_k": 1000, "bm25_depth": 1000} + yaml.safe_dump({"runtime": {"rate_probes": PROBES}}))
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
    assert not any(k.startswith("rate/") for k in metadata(materialize(defs, "scores", "tiny-a|bm25-retrieval"), "scores"))
