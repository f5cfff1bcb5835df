"""How assets run: the policy table, jobs, the refresh sensor, batched backfill runs, pools, code versions.

Real Dagster definitions of the `test` profile; real SQLite instances with hnr's `dagster.yaml` where the
instance's settings matter (pools, backfills). The automation condition itself is exercised over a whole
materialized grid in `test_end_to_end.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hnr_assets.cli import init_dagster_home, release_dead_demo_runs, submit_backfill
from hnr_assets.definitions import build_defs
from hnr_assets.defs import partitions, versions
from hnr_assets.defs.execution import HEAVY_POOL, POLICIES, combine_check_results, each_partition, hnr_asset
from hnr_assets.defs.jobs import REFRESH_SENSOR
from hnr_assets.profiles import load_profile
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings

HEAVY = {"ce_negatives", "generator_models", "llm_negatives", "llm_negatives_ce_scores", "encoders", "scores"}
REFRESHED = {"llm_negatives_ce_scores", "training_sets", "encoders", "scores", "results"}


@pytest.fixture
def defs(test_settings: Settings) -> dg.Definitions:
    return build_defs(test_settings)


def test_every_asset_runs_with_the_policy_of_its_kind(defs: dg.Definitions, test_settings: Settings) -> None:
    profile = load_profile(test_settings.profile_path)
    axes = {
        "dataset": partitions.dataset_partitions(profile),
        "generator": partitions.generator_partitions(profile),
        "recipe": partitions.recipe_partitions(profile),
        "system×dataset": partitions.system_dataset_partitions(profile),
    }
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.toposorted_asset_keys if graph.get(k).is_materializable}
    assert names == set(POLICIES)
    for name in names:
        policy, assets_def = POLICIES[name], defs.resolve_assets_def(name)
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def == (axes[policy.axis] if policy.axis else None), name
        assert node.pools == ({HEAVY_POOL} if name in HEAVY else set()), name
        assert policy.heavy == (name in HEAVY) and policy.refresh == (name in REFRESHED), name
        expected = policy.partitions_per_run
        got = assets_def.backfill_policy.max_partitions_per_run if assets_def.backfill_policy else None
        assert got == expected, name
        assert (node.automation_condition is not None) == (name in REFRESHED), name
    # Cheap partitioned assets batch partitions; the long ones take one per run.
    assert {n for n, p in POLICIES.items() if p.partitions_per_run == 1} == {
        "generator_models",
        "llm_negatives",
        "llm_negatives_ce_scores",
        "encoders",
    }
    assert POLICIES["datasets"].partitions_per_run > 1 and POLICIES["scores"].partitions_per_run > 1


def test_jobs_per_stage_resolve_and_hold_every_asset_once(defs: dg.Definitions) -> None:
    by_job = {}
    for job in defs.jobs:
        resolved = defs.resolve_job_def(job.name)  # raises if its assets were partitioned differently
        by_job[job.name] = sorted(k.to_user_string() for k in resolved.asset_layer.executable_asset_keys)
    assert by_job == {
        "datasets_per_dataset_job": ["datasets"],
        "datasets_job": ["training_pairs"],
        "mining_job": ["bm25_index", "bm25_negatives", "ce_negatives", "cross_encoder"],
        "mining_per_dataset_job": ["bm25_scores"],
        "generation_per_generator_job": ["generator_models", "llm_negatives"],
        "training_per_generator_job": ["llm_negatives_ce_scores"],
        "training_per_recipe_job": ["encoders", "training_sets"],
        "training_job": ["base_encoder"],
        "evaluation_per_system_dataset_job": ["scores"],
        "evaluation_job": ["results"],
    }
    everything = [name for names in by_job.values() for name in names]
    assert sorted(everything) == sorted(POLICIES)
    assert defs.resolve_job_def("training_per_recipe_job").partitions_def.get_partition_keys()[:2] == ["bm25", "ce"]
    # The whole code location loads as `dagster dev` loads it (job and op names must not collide).
    dg.Definitions.validate_loadable(defs)


def test_refresh_sensor_is_off_until_switched_on(defs: dg.Definitions) -> None:
    (sensor,) = defs.sensors
    assert sensor.name == REFRESH_SENSOR
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert sensor.emit_backfills
    targeted = sensor.asset_selection.resolve(defs.resolve_asset_graph())
    assert {k.to_user_string() for k in targeted} == REFRESHED


def test_a_backfill_run_of_several_partitions_reports_each_one(defs: dg.Definitions, test_settings: Settings) -> None:
    """A run over a range of `datasets` partitions (what a batched backfill launches)."""
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        defs.assets,
        selection=["datasets"],
        instance=instance,
        resources=defs.resources,
        tags={"dagster/asset_partition_range_start": "tiny-a", "dagster/asset_partition_range_end": "tiny-b"},
    )
    mats = {m.partition: m.metadata for m in result.asset_materializations_for_node("datasets")}
    assert set(mats) == {"tiny-a", "tiny-b"}
    assert mats["tiny-a"]["path"].value.endswith("/datasets/tiny-a")
    assert mats["tiny-b"]["path"].value.endswith("/datasets/tiny-b")
    assert "b0-0" in mats["tiny-b"]["sample_documents"].value and "b0-0" not in mats["tiny-a"]["sample_documents"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["partitions"].value == 2
    hashes = {p: m[versions.METADATA_KEY].value for p, m in mats.items()}
    profile = load_profile(test_settings.profile_path)
    assert hashes == {p: versions.settings_hash(profile, "datasets", p) for p in ("tiny-a", "tiny-b")}
    assert hashes["tiny-a"] != hashes["tiny-b"]


@pytest.mark.parametrize("several", [False, True], ids=["one partition", "a range"])
def test_a_settings_hash_the_body_records_wins_over_the_profile_s(test_settings: Settings, several: bool) -> None:
    """A run launched with other settings than the profile's records what it ran with (`used=`)."""
    profile = load_profile(test_settings.profile_path)

    def body(context) -> dg.MaterializeResult:  # (a string annotation here: Dagster accepts none)
        own = {"tiny-b": {versions.METADATA_KEY: "1+launchpad"}}
        return each_partition(context, lambda key: dg.MaterializeResult(metadata=own.get(key, {"rows": 1})))

    asset = hnr_asset("datasets", profile, description="a body of its own")(body)
    tags = {"dagster/asset_partition_range_start": "tiny-a", "dagster/asset_partition_range_end": "tiny-b"}
    result = dg.materialize([asset], partition_key=None if several else "tiny-b", tags=tags if several else None)
    recorded = {
        m.partition: m.metadata[versions.METADATA_KEY].value for m in result.asset_materializations_for_node("datasets")
    }
    expected = {"tiny-b": "1+launchpad"}
    if several:
        expected["tiny-a"] = versions.settings_hash(profile, "datasets", "tiny-a")
    assert recorded == expected


@pytest.mark.parametrize("name", ["bm25_negatives", "ce_negatives"])
def test_heavy_asset_bodies_run_inside_the_host_slot_of_a_sqlite_instance(
    test_settings: Settings, tmp_path: Path, name: str
) -> None:
    import fcntl

    profile = load_profile(test_settings.profile_path)
    home = init_dagster_home(tmp_path / "home")
    lock = home / "pools" / f"{HEAVY_POOL}.0.lock"
    seen: list[bool] = []

    def body(context) -> dg.MaterializeResult:  # unannotated: Dagster refuses a string annotation
        held = lock.exists()
        if held:
            with lock.open("a+") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    held = False
                except BlockingIOError:
                    pass
        seen.append(held)
        return dg.MaterializeResult()

    asset = hnr_asset(name, profile, description="is the slot held?")(body)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert dg.materialize([asset], instance=instance).success
    assert seen == [POLICIES[name].heavy]


def test_an_asset_body_that_does_not_take_context_first_is_refused(test_settings: Settings) -> None:
    profile = load_profile(test_settings.profile_path)
    with pytest.raises(TypeError, match="'datasets'.*`context` as its first parameter"):
        hnr_asset("datasets", profile, description="no context")(lambda storage: dg.MaterializeResult())


def test_checks_of_several_partitions_fail_with_the_partition_named() -> None:
    def result(passed: bool, problem: str = "") -> dg.MaterializeResult:
        meta = {"problems": dg.MetadataValue.md(f"- {problem}" if problem else "none")}
        return dg.MaterializeResult(
            check_results=[dg.AssetCheckResult(check_name="contract", passed=passed, metadata=meta)]
        )

    (combined,) = combine_check_results({"a": result(True), "b": result(False, "3 queries lack ranks")})
    assert not combined.passed and combined.severity == dg.AssetCheckSeverity.ERROR
    assert combined.metadata["problems"].value == "- [b] 3 queries lack ranks"
    assert combined.metadata["partitions_failed"].value == 1


def test_generation_settings_change_shows_llm_negatives_stale(tmp_path: Path, test_settings: Settings) -> None:
    """The webserver's stale status of a partition materialized before an edit of a shared section.

    (The prompt files and each generator's own settings are in the per-partition hash instead:
    `test_versions.py`, `test_end_to_end.py`.)
    """
    profile = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text())
    before = build_defs(test_settings)
    version = before.resolve_assets_def("llm_negatives").code_versions_by_key[dg.AssetKey("llm_negatives")]
    assert version.startswith("1+")
    assert version == versions.code_version(load_profile(test_settings.profile_path), "llm_negatives")

    # An edited profile (another validation threshold): the partition materialized before is stale.
    profile["generation"]["validation"]["min_words"] = 10
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(profile))
    after = build_defs(Settings.from_env({**_env(test_settings), "HNR_PROFILE": str(path)}))
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "llm_negatives", partition="tiny-lm-a", tags={"dagster/code_version": version, "dagster/data_version": "x"}
        )
    )
    # What the UI shows (the webserver's resolver of stale status).
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    def resolver(defs_: dg.Definitions) -> CachingStaleStatusResolver:
        return CachingStaleStatusResolver(instance, defs_.resolve_asset_graph(), LoadingContextForTest(instance))

    key = dg.AssetKey("llm_negatives")

    def reasons(defs_: dg.Definitions) -> list[str]:  # (the runless events carry no input provenance)
        return [c.reason for c in resolver(defs_).get_stale_causes(key, "tiny-lm-a")]

    assert "has a new code version" not in reasons(before)
    assert (
        "has a new code version" in reasons(after) and resolver(after).get_status(key, "tiny-lm-a") == StaleStatus.STALE
    )


def _env(settings: Settings) -> dict[str, str]:
    return {"HNR_DATA_DIR": str(settings.data_dir), "HNR_DATASETS_DIR": str(settings.datasets_dir)}


STEP_SCRIPT = """
import json, sys, time
from pathlib import Path
import dagster as dg
from hnr_assets.defs.execution import in_pool_host_slot

name, pool, home, folder = sys.argv[1:]

def body(context) -> None:
    started = time.time()
    time.sleep(3)
    (Path(folder) / f"{name}.json").write_text(json.dumps([started, time.time()]))

step = dg.asset(name=name, pool=pool or None)(in_pool_host_slot(pool, body) if pool else body)

(Path(folder) / f"{name}.ready").touch()
while len(list(Path(folder).glob("*.ready"))) < int(Path(folder, "expected").read_text()):
    time.sleep(0.05)  # every process has imported Dagster
with dg.DagsterInstance.from_config(home) as instance:
    dg.materialize([step], instance=instance)
"""


def _start_steps(script: Path, home: Path, folder: Path, pool: str, count: int) -> list[subprocess.Popen]:
    folder.mkdir()
    (folder / "expected").write_text(str(count))
    return [
        subprocess.Popen([sys.executable, str(script), f"step_{i}", pool, str(home), str(folder)]) for i in range(count)
    ]


@pytest.mark.slow
def test_the_heavy_pool_runs_one_step_at_a_time(tmp_path: Path) -> None:
    """hnr's `dagster.yaml` and host slot limit the pool to one step across runs (two processes started at
    once); steps without a pool overlap."""
    home = init_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:  # creates the storage before two processes race
        instance.get_runs()
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)

    def spans(pool: str) -> list[tuple[float, float]]:
        folder = tmp_path / (pool or "none")
        procs = _start_steps(script, home, folder, pool, 2)
        assert [p.wait(timeout=180) for p in procs] == [0, 0]
        return [tuple(json.loads((folder / f"step_{i}.json").read_text())) for i in range(2)]

    def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    assert not overlap(*spans(HEAVY_POOL))
    assert overlap(*spans(""))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        info = instance.event_log_storage.get_concurrency_info(HEAVY_POOL)
    assert (info.slot_count, info.active_slot_count) == (1, 0)


@pytest.mark.slow
def test_a_heavy_step_granted_a_taken_slot_waits_for_the_host_slot(tmp_path: Path) -> None:
    """The case Dagster's SQLite claim lets through (two steps granted the pool's one slot at once), made
    certain: this process holds the host slot, so the step Dagster starts must wait until it is released."""
    from hnr_assets.lib.runtime.slots import hold_slot

    home = init_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs()
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    folder = tmp_path / "held"
    with hold_slot(home / "pools", HEAVY_POOL, 1):
        (proc,) = _start_steps(script, home, folder, HEAVY_POOL, 1)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 120
            messages: list[str] = []
            while not any("every slot of pool 'heavy'" in m for m in messages):  # started, and waiting
                assert time.monotonic() < deadline and proc.poll() is None, messages
                time.sleep(0.2)
                messages = [e.user_message for run in instance.get_runs() for e in instance.all_logs(run.run_id)]
        time.sleep(4)  # longer than the step (3 s)
        assert proc.poll() is None and not (folder / "step_0.json").exists()
        released = time.time()
    assert proc.wait(timeout=180) == 0
    started, _ = json.loads((folder / "step_0.json").read_text())
    assert started >= released


def test_demo_runs_of_a_killed_process_give_their_pool_slot_back(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = dead.stdout.strip()
    home = init_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        import socket

        tags = {"hnr/launched_by": "demo", "hnr/host": socket.gethostname()}
        killed = instance.create_run_for_job(
            _toy_job(), run_config={}, tags={**tags, "hnr/pid": dead_pid}, status=dg.DagsterRunStatus.STARTED
        )
        alive = instance.create_run_for_job(
            _toy_job(), run_config={}, tags={**tags, "hnr/pid": "1"}, status=dg.DagsterRunStatus.STARTED
        )
        instance.event_log_storage.set_concurrency_slots(HEAVY_POOL, 1)
        claim = instance.event_log_storage.claim_concurrency_slot(HEAVY_POOL, killed.run_id, "llm_negatives")
        assert claim.is_claimed

        assert release_dead_demo_runs(instance) == [killed.run_id]
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED
        assert instance.event_log_storage.get_concurrency_info(HEAVY_POOL).active_slot_count == 0


def _toy_job() -> dg.JobDefinition:
    @dg.op
    def noop() -> None:
        return None

    @dg.job
    def toy() -> None:
        noop()

    return toy


def test_cli_backfill_targets_every_partition_of_every_asset(defs: dg.Definitions, tmp_path: Path) -> None:
    home = init_dagster_home(tmp_path / "home")
    graph = defs.resolve_asset_graph()
    expected = {
        (k.to_user_string(), p)
        for k in graph.toposorted_asset_keys
        if graph.get(k).is_materializable
        for p in (graph.get(k).partitions_def.get_partition_keys() if graph.get(k).partitions_def else [None])
    }
    with dg.DagsterInstance.from_config(str(home)) as instance:
        everything = instance.get_backfill(submit_backfill(defs, instance))
        generation = instance.get_backfill(
            submit_backfill(defs, instance, select=["llm_negatives"], partitions=["tiny-lm-b"])
        )
    targeted = {
        (ap.asset_key.to_user_string(), ap.partition_key)
        for ap in everything.asset_backfill_data.target_subset.iterate_asset_partitions()
    }
    assert targeted == expected and len(expected) == 2 + 1 + 4 + 2 + 4 + 2 + 14 + 1 + 14 + 32 + 1
    assert everything.status.value == "REQUESTED" and everything.tags["hnr/launched_by"] == "cli backfill"
    assert [
        (ap.asset_key.to_user_string(), ap.partition_key)
        for ap in generation.asset_backfill_data.target_subset.iterate_asset_partitions()
    ] == [("llm_negatives", "tiny-lm-b")]
