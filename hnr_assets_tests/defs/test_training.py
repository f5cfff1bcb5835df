"""The training stage on a real Dagster instance, a real MLflow store and a tiny random BERT.

The negative sets are written by the test in the shared contract (the mining and generation stages
write them in production). One data root is shared by the module: training pairs, base encoder and
negative sets are built once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hnr_assets.definitions import build_defs
from hnr_assets.lib.mining.ce_filter import false_negative_mask
from hnr_assets.settings import Settings
from hnr_assets_tests.conftest import materialize, metadata
from hnr_assets_tests.fixtures import make_tiny_dataset
from hnr_assets_tests.training_fixtures import single_torch_thread, write_negative_sets

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GENERATORS = ["tiny-lm-a", "tiny-lm-b"]

one_thread = pytest.fixture(scope="module", autouse=True)(single_torch_thread)


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def encoder_config(**values) -> dict:
    return {"ops": {"encoders": {"config": values}}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Test-profile settings over a tiny mirror; pairs, base encoder and negative sets in place."""
    root = tmp_path_factory.mktemp("training")
    make_tiny_dataset(root / "mirror" / "tiny-a", seed=1)
    make_tiny_dataset(root / "mirror" / "tiny-b", seed=2, prefix="b")
    settings = Settings.from_env(
        {"HNR_PROFILE": "test", "HNR_DATA_DIR": str(root / "data"), "HNR_DATASETS_DIR": str(root / "mirror")}
    )
    defs = build_defs(settings)
    assert materialize(defs, "training_pairs").success
    base = materialize(defs, "base_encoder")
    profile_root = settings.data_dir / "test"
    # Generator b skips the last 2 of the 24 pairs and writes only 2 negatives for the first 3.
    frames = write_negative_sets(profile_root, GENERATORS, skip_pairs={"tiny-lm-b": 2}, short_pairs={"tiny-lm-b": 3})
    return {"settings": settings, "defs": defs, "root": profile_root, "frames": frames, "base": base}


def mlflow_client(env):
    return env["defs"].resources["mlflow"].client()


def runs_of(env, recipe: str) -> list:
    mlflow = env["defs"].resources["mlflow"]
    return mlflow.find_runs({"hnr/asset": "encoders", "hnr/partition": recipe}, status=None)


def test_definitions_partitions_and_launchpad_defaults(env) -> None:
    defs = env["defs"]
    graph = defs.resolve_asset_graph()
    keys = list(defs.resolve_assets_def("encoders").partitions_def.get_partition_keys())
    assert len(keys) == 14 and {"bm25", "ce", "all-llms+ce", "llm-tiny-lm-b-filtered"} <= set(keys)
    # same_queries: every recipe reads every generator's negatives (the common query set).
    training_sets = defs.resolve_assets_def("training_sets")
    assert isinstance(training_sets.get_partition_mapping(dg.AssetKey("llm_negatives")), dg.AllPartitionMapping)
    parents = graph.get_parents_partitions(dg.AssetKey("training_sets"), "bm25").parent_partitions
    assert {p.asset_key.to_user_string() for p in parents} >= {"llm_negatives", "bm25_negatives", "ce_negatives"}
    scores = graph.get_parents_partitions(dg.AssetKey("training_sets"), "llm-tiny-lm-a-filtered").parent_partitions
    assert ("llm_negatives_ce_scores", "tiny-lm-a") in {(p.asset_key.to_user_string(), p.partition_key) for p in scores}
    fields = defs.resolve_assets_def("encoders").op.config_schema.config_type.fields
    assert fields["max_steps"].default_value == 6 and fields["batch_size"].default_value == 4
    meta = metadata(env["base"], "base_encoder")
    assert (meta["source"], meta["dimension"], meta["max_seq_length"]) == ("tiny-random", 32, 48)
    assert checks(env["base"]) == {"loads": True}


def test_training_sets_share_pairs_and_split(env) -> None:
    defs, root = env["defs"], env["root"]
    results = {r: materialize(defs, "training_sets", r) for r in ("bm25", "llm-tiny-lm-b+bm25", "all-llms+ce")}
    meta = {r: metadata(res, "training_sets") for r, res in results.items()}
    assert all(checks(res) == {"contract": True, "not_positive": True} for res in results.values())
    assert {m["common_pairs"] for m in meta.values()} == {22}  # generator b skipped 2 of 24 pairs
    assert [meta[r]["rows"] for r in ("bm25", "llm-tiny-lm-b+bm25", "all-llms+ce")] == [22, 44, 66]
    assert meta["all-llms+ce"]["rows_per_source"] == {"llm-tiny-lm-a": 22, "llm-tiny-lm-b": 22, "ce": 22}
    assert meta["llm-tiny-lm-b+bm25"]["short_rows_filled"] == 3
    assert "| query | positive | negative_1 | source | split |" in meta["bm25"]["sample_rows"]
    splits = [pl.read_parquet(root / "training_sets" / r / "split.parquet") for r in meta]
    assert splits[0].equals(splits[1]) and splits[0].equals(splits[2])
    assert splits[0].filter(pl.col("split") == "validation").height == 3  # 20% of the 16 training queries
    rows = pl.read_parquet(root / "training_sets" / "all-llms+ce" / "training_set.parquet")
    assert rows.group_by("query_id").agg(pl.col("split").n_unique())["split"].max() == 1
    manifest = json.loads((root / "training_sets" / "all-llms+ce" / "manifest.json").read_text())
    assert manifest["sources"] == ["llm-tiny-lm-a", "llm-tiny-lm-b", "ce"]
    assert set(manifest["source_files"]) == {"bm25", "ce", "llm-tiny-lm-a", "llm-tiny-lm-b"}
    assert manifest["fingerprint"] == meta["all-llms+ce"]["fingerprint"]

    own = materialize(
        defs, "training_sets", "bm25", run_config={"ops": {"training_sets": {"config": {"same_queries": False}}}}
    )
    assert metadata(own, "training_sets")["rows"] == 24  # the launchpad override: every pair BM25 covers


def test_encoder_run_metrics_and_registered_versions(env) -> None:
    import mlflow.sentence_transformers

    defs, root = env["defs"], env["root"]
    assert materialize(defs, "training_sets", "llm-tiny-lm-a+bm25").success
    result = materialize(defs, "encoders", "llm-tiny-lm-a+bm25")
    meta = metadata(result, "encoders")
    assert checks(result)["contract"] is True and "beats_base" in checks(result)
    run_id = meta["mlflow_run_id"]
    assert meta["mlflow_run"].endswith(f"/runs/{run_id}") and meta["mlflow_run"].startswith("http://127.0.0.1:5000/#/")
    assert meta["registered_model"] == "hnr-test-llm-tiny-lm-a+bm25" and meta["model_version"] == "1"

    training = json.loads((root / "encoders" / "llm-tiny-lm-a+bm25" / "training.json").read_text())
    assert training["mlflow_run_id"] == run_id and training["model_version"] == "1"
    assert training["base_model"] == "tiny-random" and training["steps"] <= 6
    assert training["best_validation_score"] == pytest.approx(meta["best_validation_ndcg_at_10"], abs=1e-4)
    assert sorted(p.name for p in (root / "encoders").iterdir()) == ["llm-tiny-lm-a+bm25"]  # no scratch left

    client = mlflow_client(env)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["recipe"] == "llm-tiny-lm-a+bm25" and params["sources"] == "llm-tiny-lm-a,bm25"
    assert params["generator.tiny-lm-a.model"] == "tiny-random" and params["base_model"] == "tiny-random"
    assert params["trainer.batch_size"] == "4" and params["sets.negatives_per_row"] == "5"
    assert params["training_set_fingerprint"] == training["training_set_fingerprint"]
    assert {"source_sha256.bm25", "source_sha256.llm-tiny-lm-b"} <= set(params)
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == list(range(1, training["steps"] + 1))
    assert len(client.get_metric_history(run_id, "learning_rate")) == training["steps"]
    curve = client.get_metric_history(run_id, "validation_ndcg_at_10")
    assert [m.step for m in curve] == [s for s, _ in training["evaluations"]]
    assert curve[0].step == 0 and curve[0].value == pytest.approx(training["base_validation_score"])

    (version,) = client.search_model_versions("name = 'hnr-test-llm-tiny-lm-a+bm25'")
    assert version.run_id == run_id and str(version.version) == "1"
    source = client.get_model_version_download_uri("hnr-test-llm-tiny-lm-a+bm25", "1")
    loaded = mlflow.sentence_transformers.load_model(source)  # the registered version, as MLflow serves it
    assert loaded.encode(["a query"]).shape == (1, 32)

    again = materialize(defs, "encoders", "llm-tiny-lm-a+bm25", run_config=encoder_config(max_steps=2, eval_steps=1))
    meta2 = metadata(again, "encoders")
    assert meta2["model_version"] == "2" and meta2["steps"] == 2
    assert client.get_run(meta2["mlflow_run_id"]).data.params["trainer.max_steps"] == "2"
    assert sorted(r.info.status for r in runs_of(env, "llm-tiny-lm-a+bm25")) == ["FINISHED", "FINISHED"]
    versions = client.search_model_versions("name = 'hnr-test-llm-tiny-lm-a+bm25'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]


def test_failed_training_leaves_a_failed_run_and_no_version(env) -> None:
    defs = env["defs"]
    assert materialize(defs, "training_sets", "ce").success
    result = materialize(defs, "encoders", "ce", run_config=encoder_config(precision="fp16"), raise_on_error=False)
    assert not result.success
    assert "fp16 mixed precision needs a GPU" in str(result.get_step_failure_events()[0].event_specific_data.error)
    (run,) = runs_of(env, "ce")
    assert run.info.status == "FAILED"
    assert mlflow_client(env).search_model_versions("name = 'hnr-test-ce'") == []
    bad = materialize(defs, "encoders", "ce", run_config=encoder_config(batch_size=1), raise_on_error=False)
    assert "encoders[ce]: invalid run config: batch_size" in str(
        bad.get_step_failure_events()[0].event_specific_data.error
    )
    assert len(runs_of(env, "ce")) == 1  # refused before any run was opened


def test_filtered_recipe_scores_llm_negatives_with_the_cross_encoder(env) -> None:
    defs, root = env["defs"], env["root"]
    missing = materialize(defs, "training_sets", "llm-tiny-lm-a-filtered", raise_on_error=False)
    error = str(missing.get_step_failure_events()[0].event_specific_data.error)
    assert "cross-encoder scores of llm-tiny-lm-a are missing" in error
    assert "materialize llm_negatives_ce_scores[tiny-lm-a]" in error

    assert materialize(defs, "cross_encoder").success  # the mining stage's (a tiny random BERT in `test`)
    scored = materialize(defs, "llm_negatives_ce_scores", "tiny-lm-a")
    assert checks(scored) == {"contract": True}
    assert metadata(scored, "llm_negatives_ce_scores")["negatives_scored"] == 24 * 5
    scores = pl.read_parquet(root / "llm_negatives_ce_scores" / "tiny-lm-a" / "scores.parquet")
    assert scores.height == 120 and scores["negative_score"].is_between(0, 1).all()

    # The random model scores every pair 0.4965 +- 1e-7: with margin 0 the rule drops the negatives that
    # score at least as high as their positive and keeps the others; the expectation is recomputed below.
    config = {"filter_relative_margin": 0.0, "filter_absolute_margin": None}
    result = materialize(
        defs, "training_sets", "llm-tiny-lm-a-filtered", run_config={"ops": {"training_sets": {"config": config}}}
    )
    meta = metadata(result, "training_sets")
    negatives = env["frames"]["llm-tiny-lm-a"]
    expected_drop = 0
    for _, group in scores.sort("negative_rank").group_by(["query_id", "positive_id"], maintain_order=True):
        mask = false_negative_mask(
            group["negative_score"].to_list(), group["positive_score"][0], relative_margin=0.0, absolute_margin=None
        )
        expected_drop += sum(mask)
    assert meta["negatives_filtered_out"] == expected_drop and 0 < expected_drop < negatives.height
    assert meta["rows"] > 0 and meta["common_pairs"] == 22  # the query set is chosen before filtering
    rows = pl.read_parquet(root / "training_sets" / "llm-tiny-lm-a-filtered" / "training_set.parquet")
    kept = negatives.join(
        scores.filter(pl.col("negative_score") < pl.col("positive_score")),
        on=["query_id", "positive_id", "negative_rank"],
        how="semi",
    )
    written = {t for c in [f"negative_{i}" for i in range(1, 6)] for t in rows[c].to_list()}
    assert written <= set(kept["negative"].to_list())

    path = root / "llm_negatives" / "tiny-lm-a" / "negatives.parquet"
    original = path.read_bytes()
    try:
        negatives.head(100).write_parquet(path)
        stale = materialize(defs, "training_sets", "llm-tiny-lm-a-filtered", raise_on_error=False)
        assert "the scores were computed for another version of llm-tiny-lm-a" in str(
            stale.get_step_failure_events()[0].event_specific_data.error
        )
    finally:
        path.write_bytes(original)


def test_not_positive_check_blocks(env, tmp_path) -> None:
    root = env["root"]
    path = root / "ce_negatives" / "negatives.parquet"
    original = path.read_bytes()
    frame = pl.read_parquet(path)
    first = frame.row(0, named=True)
    poisoned = frame.with_columns(
        pl.when((pl.col("query_id") == first["query_id"]) & (pl.col("negative_rank") == 1))
        .then(pl.col("positive").str.to_uppercase())
        .otherwise(pl.col("negative"))
        .alias("negative")
    )
    try:
        poisoned.write_parquet(path)
        result = materialize(env["defs"], "training_sets", "ce", raise_on_error=False)
        assert checks(result)["not_positive"] is False
        assert not result.success  # blocking: the run fails, downstream assets do not run
    finally:
        path.write_bytes(original)


@pytest.mark.slow
def test_killed_training_is_closed_and_rerun_leaves_one_finished_run(env) -> None:
    """SIGKILL a real materialization mid-training, rerun it: one FAILED run (closed), one FINISHED."""
    defs, settings = env["defs"], env["settings"]
    assert materialize(defs, "training_sets", "llm-tiny-lm-b").success
    defs.resources["mlflow"].experiment_id()  # the store exists before two processes use it
    script = (
        "import dagster as dg\n"
        "from hnr_assets.definitions import build_defs\n"
        "defs = build_defs()\n"
        "dg.materialize(defs.assets, selection=['encoders'], partition_key='llm-tiny-lm-b',\n"
        "    resources=defs.resources, instance=dg.DagsterInstance.ephemeral(),\n"
        "    run_config={'ops': {'encoders': {'config': {'max_steps': 100000, 'eval_steps': 100000}}}})\n"
    )
    child_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "HNR_PROFILE": "test",
        "HNR_DATA_DIR": str(settings.data_dir),
        "HNR_DATASETS_DIR": str(settings.datasets_dir),
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    client = mlflow_client(env)
    deadline = time.monotonic() + 240
    killed = None
    try:
        while time.monotonic() < deadline and child.poll() is None:
            running = [r for r in runs_of(env, "llm-tiny-lm-b") if r.info.status == "RUNNING"]
            if running and client.get_metric_history(running[0].info.run_id, "loss"):
                killed = running[0].info.run_id
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        if child.poll() is None and killed is None:
            child.kill()
        _, stderr = child.communicate(timeout=60)
    assert killed, f"the child never reached training: rc={child.returncode}\n{stderr.decode()[-3000:]}"
    assert child.returncode == -signal.SIGKILL
    assert client.get_run(killed).info.status == "RUNNING"  # nobody could close it

    result = materialize(defs, "encoders", "llm-tiny-lm-b")
    assert result.success
    runs = {r.info.run_id: r for r in runs_of(env, "llm-tiny-lm-b")}
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]
    assert runs[killed].info.status == "FAILED"
    assert "ended without closing it" in runs[killed].data.tags["hnr/closed_reason"]
    finished = metadata(result, "encoders")["mlflow_run_id"]
    versions = client.search_model_versions("name = 'hnr-test-llm-tiny-lm-b'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", finished)]
    leftovers = [p.name for p in (env["root"] / "encoders").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the killed attempt's temporary folder was removed by the rerun
