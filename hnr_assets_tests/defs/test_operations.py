"""How assets run: the policy table, jobs, the refresh sensor, batched backfill runs, pools, code versions.

Real Dagster definitions of the `test` profile; real SQLite instances with hnr's `dagster.yaml` where the
instance's settings matter (pools, backfills). The automation condition itself is exercised over a whole
materialized grid in `test_end_to_end.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hnr_assets.cli import init_dagster_home, release_dead_demo_runs, submit_backfill
from hnr_assets.definitions import build_defs
from hnr_assets.defs import partitions
from hnr_assets.defs.execution import HEAVY_POOL, POLICIES, combine_check_results, versioned
from hnr_assets.defs.jobs import REFRESH_SENSOR
from hnr_assets.lib.generation.prompts import load_prompt
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


def test_a_backfill_run_of_several_partitions_reports_each_one(defs: dg.Definitions) -> None:
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


def test_prompt_or_generation_settings_change_shows_llm_negatives_stale(
    tmp_path: Path, test_settings: Settings
) -> None:
    profile = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text())
    before = build_defs(test_settings)
    version = before.resolve_assets_def("llm_negatives").code_versions_by_key[dg.AssetKey("llm_negatives")]
    prompts = [load_prompt(g["prompt"]).path for g in profile["generators"]]
    assert version.startswith("1+") and version == versioned("1", *prompts, *_generation(test_settings))

    # The prompt file's bytes are part of the version.
    edited = tmp_path / "v1.yaml"
    edited.write_bytes(prompts[0].read_bytes() + b"\n# reworded\n")
    assert versioned("1", edited, *prompts[1:]) != versioned("1", *prompts)

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


def _generation(settings: Settings) -> tuple:
    profile = load_profile(settings.profile_path)
    return profile.generation, profile.generators


STEP_SCRIPT = """
import json, sys, time
from pathlib import Path
import dagster as dg

name, pool, home, folder = sys.argv[1:]

@dg.asset(name=name, pool=pool or None)
def step() -> None:
    started = time.time()
    time.sleep(3)
    (Path(folder) / f"{name}.json").write_text(json.dumps([started, time.time()]))

(Path(folder) / f"{name}.ready").touch()
while len(list(Path(folder).glob("*.ready"))) < 2:  # both processes have imported Dagster
    time.sleep(0.05)
with dg.DagsterInstance.from_config(home) as instance:
    dg.materialize([step], instance=instance)
"""


@pytest.mark.slow
def test_the_heavy_pool_runs_one_step_at_a_time(tmp_path: Path) -> None:
    """hnr's `dagster.yaml` limits the pool to one step across runs (two processes); steps without a pool overlap."""
    home = init_dagster_home(tmp_path / "home")
    with dg.DagsterInstance.from_config(str(home)) as instance:  # creates the storage before two processes race
        instance.get_runs()
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)

    def spans(pool: str) -> list[tuple[float, float]]:
        folder = tmp_path / (pool or "none")
        folder.mkdir()
        procs = [
            subprocess.Popen([sys.executable, str(script), f"step_{i}", pool, str(home), str(folder)]) for i in range(2)
        ]
        assert [p.wait(timeout=180) for p in procs] == [0, 0]
        return [tuple(json.loads((folder / f"step_{i}.json").read_text())) for i in range(2)]

    def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    assert not overlap(*spans(HEAVY_POOL))
    assert overlap(*spans(""))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        info = instance.event_log_storage.get_concurrency_info(HEAVY_POOL)
    assert (info.slot_count, info.active_slot_count) == (1, 0)


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
