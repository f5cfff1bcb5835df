"""MlflowResource against a real MLflow store in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnr_assets.resources.mlflow import MlflowResource, TrackingError


@pytest.fixture
def tracking(tmp_path: Path) -> MlflowResource:
    return MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        experiment="hnr-test",
        artifact_location=str(tmp_path / "mlflow" / "artifacts"),
    )


def test_run_finishes_with_params_metrics_artifacts(tracking: MlflowResource, tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("hello")
    with tracking.run("encoder:bm25", tags={"hnr/recipe": "bm25"}) as run:
        run.log_params({"batch_size": 16, "recipe": "bm25"})
        for step in range(3):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        run.log_artifact(tmp_path / "note.txt")
    client = tracking.client()
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"batch_size": "16", "recipe": "bm25"}
    assert got.data.tags["hnr/recipe"] == "bm25"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [1.0, 0.5, pytest.approx(1 / 3)]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["note.txt"]
    assert str(tmp_path / "mlflow" / "artifacts") in got.info.artifact_uri
    assert run.url.endswith(f"/#/experiments/{run.experiment_id}/runs/{run.run_id}")


def test_failure_marks_the_run_failed(tracking: MlflowResource) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracking.run("encoder:ce") as run:
        raise RuntimeError("boom")
    assert tracking.client().get_run(run.run_id).info.status == "FAILED"


def test_one_experiment_per_name(tracking: MlflowResource) -> None:
    assert tracking.experiment_id() == tracking.experiment_id()


def test_unreachable_server_is_a_clear_error() -> None:
    dead = MlflowResource(tracking_uri="http://127.0.0.1:9", experiment="x", retries=2, backoff_seconds=0.01)
    with pytest.raises(
        TrackingError, match=r"MLflow at http://127.0.0.1:9 failed to get or create the experiment after 2 attempts"
    ):
        dead.experiment_id()
