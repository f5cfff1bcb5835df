"""MlflowResource's registry and stale-run sweep against a real MLflow store, with real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from hnr_assets.defs.training.assets import owner_gone
from hnr_assets.resources.mlflow import MlflowResource


@pytest.fixture
def tracking(tmp_path: Path) -> MlflowResource:
    return MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        experiment="hnr-test",
        artifact_location=str(tmp_path / "mlflow" / "artifacts"),
    )


def _open_run(tracking: MlflowResource, pid: int, dagster_run_id: str = "r1") -> str:
    """A run left RUNNING, as a killed process leaves it."""
    client = tracking.client()
    tags = {
        "hnr/asset": "encoders",
        "hnr/partition": "bm25",
        "hnr/host": socket.gethostname(),
        "hnr/pid": str(pid),
        "hnr/dagster_run_id": dagster_run_id,
    }
    return client.create_run(tracking.experiment_id(), tags=tags, run_name="encoder:bm25").info.run_id


def test_sweep_closes_only_runs_whose_process_is_gone(tracking: MlflowResource, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_run = _open_run(tracking, alive.pid)
        dead_run = _open_run(tracking, dead.pid)
        own_earlier = _open_run(tracking, os.getpid(), dagster_run_id="earlier")
        own_current = _open_run(tracking, os.getpid(), dagster_run_id="current")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "weights.txt").write_text("w")
        client = tracking.client()
        client.create_registered_model("hnr-test-bm25")
        client.create_model_version("hnr-test-bm25", str(tmp_path / "model"), run_id=dead_run)

        closed = tracking.close_stale_runs(
            {"hnr/asset": "encoders", "hnr/partition": "bm25"},
            lambda run: owner_gone(instance, "current", run),
            reason="test sweep",
        )
        assert sorted(closed) == sorted([dead_run, own_earlier])
        status = {r: client.get_run(r).info.status for r in (live_run, dead_run, own_earlier, own_current)}
        assert status == {live_run: "RUNNING", dead_run: "FAILED", own_earlier: "FAILED", own_current: "RUNNING"}
        assert client.get_run(dead_run).data.tags["hnr/closed_reason"] == "test sweep"
        assert client.search_model_versions("name = 'hnr-test-bm25'") == []  # the dead run's version is gone

        alive.kill()
        alive.wait()
        again = tracking.close_stale_runs(
            {"hnr/asset": "encoders", "hnr/partition": "bm25"},
            lambda run: owner_gone(instance, "current", run),
            reason="test sweep",
        )
        assert again == [live_run]
    finally:
        alive.kill()


def test_a_failed_run_keeps_no_registered_version(tracking: MlflowResource, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("w")
    with pytest.raises(RuntimeError, match="after registration"), tracking.run("encoder:ce") as run:
        version = run.register_model("hnr-test-ce", str(tmp_path / "model"), description="d", tags={"recipe": "ce"})
        assert version == "1"
        raise RuntimeError("after registration")
    client = tracking.client()
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert client.search_model_versions("name = 'hnr-test-ce'") == []
    with tracking.run("encoder:ce") as ok:
        assert ok.register_model("hnr-test-ce", str(tmp_path / "model")) == "2"
    (kept,) = client.search_model_versions("name = 'hnr-test-ce'")
    assert kept.run_id == ok.run_id
    assert tracking.model_url("hnr-test-ce", "2") == "http://127.0.0.1:5000/#/models/hnr-test-ce/versions/2"
