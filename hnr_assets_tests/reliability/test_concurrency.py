"""Two materializations at the same moment over one data root and one MLflow store.

Each case starts two real processes that run `dg.materialize` and meet at a barrier just before the
step where they share state, so that they race there every time (not by luck of timing):

- two partitions of `scores` for the same baseline system (`base-encoder` on both datasets),
  meeting before the baseline's MLflow run is found or created: both datasets' metrics end up in one
  run (before the lock, each process created its own run);
- the same partition twice (as when a backfill and a manual launch overlap), meeting before the shared
  embedding cache entry is written: both succeed, the cache holds one complete entry per key, the
  score folder is complete and equals an uninterrupted run.

Shared files are checked after both: nothing temporary left, every visible file parses, no MLflow run
left RUNNING.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hnr_assets.definitions import build_defs
from hnr_assets.defs.evaluation.assets import _mlflow_name
from hnr_assets_tests.reliability.conftest import Seeded
from hnr_assets_tests.reliability.harness import (
    DATASETS,
    MATERIALIZE,
    PAUSE_PRELUDE,
    PROFILE,
    copy_root,
    frames_fingerprint,
    tmp_leftovers,
    unreadable,
)


def _key(system: str, dataset: str) -> str:
    return str(dg.MultiPartitionKey({"system": system, "dataset": dataset}))


def _race(zygote, seeded: Seeded, data_dir: Path, runs: list[list], barrier: str, tmp_path: Path) -> list[str]:
    """Start one child per entry of `runs`, all meeting at `barrier`; returns their logs (all must succeed)."""
    spec = {"kind": "barrier", "target": barrier, "dir": str(tmp_path / "barrier"), "parties": len(runs)}
    env = {**seeded.env(data_dir), "HNR_TEST_PAUSE": json.dumps(spec)}
    logs = [tmp_path / f"child-{i}.log" for i in range(len(runs))]
    pids = [zygote.spawn(env, steps, PAUSE_PRELUDE + MATERIALIZE, log) for steps, log in zip(runs, logs, strict=True)]
    codes = [zygote.wait(pid) for pid in pids]
    texts = [log.read_text(errors="replace") for log in logs]
    assert codes == [0] * len(runs), "\n\n".join(t[-3000:] for t in texts)
    assert len(list((tmp_path / "barrier").iterdir())) == len(runs)  # every child reached the barrier
    return texts


@pytest.mark.slow
def test_two_datasets_of_one_baseline_share_one_mlflow_run(seeded: Seeded, zygote, tmp_path: Path) -> None:
    data_dir = copy_root(seeded.data_dir, tmp_path / "data", drop=(f"{PROFILE}/scores", "cache/embeddings"))
    mlflow = build_defs(seeded.settings(data_dir)).resources["mlflow"]
    mlflow.experiment_id()  # the store and experiment exist, as after any earlier asset
    runs = [[("scores", _key("base-encoder", d))] for d in DATASETS]
    _race(zygote, seeded, data_dir, runs, "hnr_assets.defs.evaluation.assets:_log_to_mlflow", tmp_path)

    (run,) = mlflow.find_runs({"hnr/system": "base-encoder", "hnr/role": "baseline-evaluation"}, status=None)
    assert run.info.status == "FINISHED"
    assert {f"eval/{_mlflow_name(d)}/ndcg_at_10" for d in DATASETS} <= set(run.data.metrics)
    assert mlflow.find_runs({}, status="RUNNING") == []
    for dataset in DATASETS:
        assert (data_dir / PROFILE / "scores" / "base-encoder" / dataset / "metrics.json").is_file()
    assert len(list((data_dir / "cache" / "embeddings").iterdir())) == 4  # corpus + queries per dataset
    assert tmp_leftovers(data_dir) == [] and unreadable(data_dir) == []


@pytest.mark.slow
def test_the_same_partition_twice_at_once(seeded: Seeded, zygote, tmp_path: Path) -> None:
    data_dir = copy_root(seeded.data_dir, tmp_path / "data", drop=(f"{PROFILE}/scores", "cache/embeddings"))
    key = _key("base-encoder", DATASETS[1])
    _race(
        zygote,
        seeded,
        data_dir,
        [[("scores", key)], [("scores", key)]],
        "hnr_assets.lib.retrieval.dense:EmbeddingCache.store",
        tmp_path,
    )

    cache = sorted(p.name.rsplit("-", 1)[0] for p in (data_dir / "cache" / "embeddings").iterdir())
    assert cache == [f"{DATASETS[1]}-corpus", f"{DATASETS[1]}-queries"]
    ours = data_dir / PROFILE / "scores" / "base-encoder" / DATASETS[1]
    ref = seeded.root / "scores" / "base-encoder" / DATASETS[1]
    names = ("run.parquet", "per_query.parquet")
    assert frames_fingerprint(ours, names) == frames_fingerprint(ref, names)
    assert (
        pl.read_parquet(ours / "run.parquet").select(pl.struct("query_id", "doc_id").is_duplicated().sum()).item() == 0
    )
    assert tmp_leftovers(data_dir) == [] and unreadable(data_dir) == []
    mlflow = build_defs(seeded.settings(data_dir)).resources["mlflow"]
    assert mlflow.find_runs({}, status="RUNNING") == []


def _open_store_and_log(uri: str, artifacts: str, start, results) -> None:
    from hnr_assets.resources.mlflow import MlflowResource

    tracking = MlflowResource(
        tracking_uri=uri, experiment="hnr-race", artifact_location=artifacts, backoff_seconds=0.05
    )
    start.wait()
    try:
        with tracking.run("race") as run:
            run.log_metrics({"x": 1.0})
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}"[:500])


def test_processes_opening_a_new_sqlite_store_at_once(tmp_path: Path) -> None:
    """A new SQLite store is created and migrated by the first client; four at once used to break it."""
    import multiprocessing as mp

    from hnr_assets.resources.mlflow import MlflowResource

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    ctx = mp.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_open_store_and_log, args=(uri, str(tmp_path / "artifacts"), start, results))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = [results.get(timeout=180) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert outcomes == ["ok"] * 4
    tracking = MlflowResource(tracking_uri=uri, experiment="hnr-race")
    runs = tracking.find_runs({}, status=None)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
