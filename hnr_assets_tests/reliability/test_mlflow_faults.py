"""MLflow tracking faults against a real `mlflow server` on a free loopback port.

1. The server is not there when the asset starts: the asset fails after the configured bounded retries,
   with a message naming the server and what it was doing.
2. The server stops in the middle of a run (after the run was created, before its metrics are logged):
   the asset fails the same way; the failure path cannot reach the server to close the run, so the
   run is left RUNNING on the server.
3. The server comes back (same store): a rerun succeeds, and the stale-run sweep has marked the
   abandoned run FAILED (with the reason); no run is left RUNNING.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from hnr_assets.definitions import build_defs
from hnr_assets.resources.mlflow import HOST, MlflowResource, TrackedRun
from hnr_assets.settings import Settings
from hnr_assets_tests.conftest import materialize
from hnr_assets_tests.ops.servers import ServerProcess, free_port
from hnr_assets_tests.reliability.conftest import Seeded
from hnr_assets_tests.reliability.harness import PROFILE, copy_root

RETRIES = 2


def _server(root: Path, port: int, name: str) -> ServerProcess:
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        "mlflow server",
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
            *("--default-artifact-root", str(root / "artifacts")),
        ],
        {"PATH": "/usr/bin:/bin", "HOME": str(root), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        root,
        root / f"{name}.log",
        url,
    )
    server.wait_until("/health", lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 180, 0.5)
    return server


def _error(result: dg.ExecuteInProcessResult) -> str:
    return str(result.get_step_failure_events()[0].event_specific_data.error)


@pytest.mark.slow
def test_server_unreachable_then_lost_mid_run_then_back(seeded: Seeded, tmp_path: Path, monkeypatch) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = tmp_path / "mlflow-server"
    store.mkdir()
    data_dir = copy_root(seeded.data_dir, tmp_path / "data", drop=(f"{PROFILE}/bm25_negatives",))
    settings = Settings.from_env({**seeded.env(data_dir), "MLFLOW_TRACKING_URI": url})
    defs = build_defs(settings)
    base = defs.resources["mlflow"]
    assert base.tracking_uri == url
    mlflow = MlflowResource(
        tracking_uri=url,
        experiment=base.experiment,
        ui_url=url,
        retries=RETRIES,
        backoff_seconds=0.05,
        http_retries=0,
        http_timeout_seconds=10,
        lock_dir=str(tmp_path / "locks"),
    )

    # 1. Nobody listens on the port.
    started = time.monotonic()
    down = materialize(defs, "bm25_negatives", resources={"mlflow": mlflow}, raise_on_error=False)
    elapsed = time.monotonic() - started
    assert not down.success
    assert f"MLflow at {url} failed to get or create the experiment after {RETRIES} attempts" in _error(down)
    assert elapsed < 60  # bounded: 2 attempts, no long HTTP retry loop

    # 2. The server goes away after the run was created, when the asset logs its metrics.
    server = _server(store, port, "first")
    lost = {}
    original = TrackedRun.log_metrics

    def stop_then_log(self, *args, **kwargs):
        if not lost:
            lost["run_id"] = self.run_id
            server.stop(grace=10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrackedRun, "log_metrics", stop_then_log)
    try:
        mid = materialize(defs, "bm25_negatives", resources={"mlflow": mlflow}, raise_on_error=False)
    finally:
        server.stop(grace=5)
    monkeypatch.undo()
    assert not mid.success and lost
    assert f"MLflow at {url} failed to log metrics after {RETRIES} attempts" in _error(mid)

    # 3. The server is back with the same store: the abandoned run is still RUNNING (nobody could close
    #    it); the rerun closes it and finishes its own.
    server = _server(store, port, "second")
    try:
        client = mlflow.client()
        abandoned = client.get_run(lost["run_id"])
        assert abandoned.info.status == "RUNNING"
        assert abandoned.data.tags["hnr/host"] == HOST
        again = materialize(defs, "bm25_negatives", resources={"mlflow": mlflow}, raise_on_error=False)
        assert again.success, _error(again)
        runs = {r.info.run_id: r for r in mlflow.find_runs({"asset": "bm25_negatives"}, status=None)}
        new = again.asset_materializations_for_node("bm25_negatives")[0].metadata["mlflow_run_id"].value
        assert runs[new].info.status == "FINISHED"
        assert runs[lost["run_id"]].info.status == "FAILED"
        assert "without closing it" in runs[lost["run_id"]].data.tags["hnr/closed_reason"]
        assert mlflow.find_runs({}, status="RUNNING") == []
    finally:
        server.stop(grace=10)
