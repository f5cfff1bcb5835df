"""The whole grid end to end, materialized once: every asset and partition down to `results`, exact
staleness on it (an edited profile reruns what the edit changes and its downstream), then automation.

The `test` profile's tiny random LMs write gibberish (every passage is rejected), so its recipes have no
common pairs and `training_sets` fails. Here the profile file written by the test keeps the `test`
profile's tiny datasets and models but serves its two generators (one asked for the study's five-as-JSON
list, one for a passage per completion) from the fake OpenAI-compatible server, which writes plausible
passages: all 14 recipes of two generators get trained, scored on both datasets and tabulated. The
Dagster instance is a real SQLite one with hnr's `dagster.yaml` (so every `heavy` step takes its slot in
the pool), the MLflow store a real SQLite one.

The grid is built once for the module (`grid`, by the demo), because building it is most of the cost;
the tests run in file order and each leaves it as the next expects:

1. the first build: every partition materialized, blocking checks, pool slots, MLflow runs, the table;
2. staleness, read only: an unchanged rerun skips everything; for every asset, an edit of a setting it
   reads plans exactly that asset's affected partitions and everything downstream (computed here from
   the asset graph's child mappings, independently of the demo's parent-side test), an edit of a setting
   no output reads plans nothing;
3. staleness for real: reruns match the plan, the UI's stale status (GraphQL `assetNodes` from a code
   location in its own process, restarted in between) agrees before and after, the settings hash is on
   the materializations and the MLflow runs; the grid is left under the edited profile;
4. automation over the grid when one generator's negatives are rewritten (materializes two partitions).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from hnr_assets.cli import Step, init_dagster_home, plan_demo, run_demo
from hnr_assets.definitions import build_defs
from hnr_assets.defs import versions
from hnr_assets.lib.training.recipes import derive_recipes, system_keys
from hnr_assets.profiles import load_profile
from hnr_assets.resources.mlflow import TAG_SETTINGS_HASH
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings
from hnr_assets_tests.fixtures import make_tiny_dataset
from hnr_assets_tests.openai_server import FakeOpenAIServer
from hnr_assets_tests.ui_status import ui_stale

pytestmark = pytest.mark.slow

GENERATORS = ["served-list", "served-single"]
LIST, SINGLE = GENERATORS
ALL = None  # every partition of a partitioned asset (or the asset, unpartitioned)


def _profile(path: Path, endpoint: str) -> Path:
    profile = yaml.safe_load((BUILTIN_PROFILES_DIR / "test.yaml").read_text())
    profile["name"] = "e2e"
    profile["description"] = "The test profile with its generators served by a fake OpenAI-compatible server."
    common = {"model": "fake-model", "backend": "openai", "endpoint": endpoint, "max_attempts": 2, "seed": 0}
    profile["generators"] = [
        {**common, "key": "served-list", "prompt": "v1", "completions": 1, "pairs_per_shard": 12},
        {**common, "key": "served-single", "prompt": "single-v1", "completions": 5, "pairs_per_shard": 12},
    ]
    profile["training"]["trainer"]["max_steps"] = 2  # 14 encoders; the training loop has its own tests
    profile["training"]["trainer"]["eval_steps"] = 1
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return path


@dataclass
class Grid:
    """The materialized grid: its files, profile, settings, Dagster instance and what the first demo did."""

    folder: Path
    mirror: Path
    profile: dict
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    first: list[Step]
    edits: int = 0

    @property
    def run_tags(self) -> dict[str, str]:
        return {"hnr/data_dir": str(self.settings.data_dir)}

    def settings_for(self, profile: dict) -> Settings:
        """Settings over the same data root and mirror, with `profile` written to a file of its own."""
        self.edits += 1
        path = self.folder / f"edited-{self.edits}.yaml"
        path.write_text(yaml.safe_dump(profile, sort_keys=False))
        env = {
            "HNR_PROFILE": str(path),
            "HNR_DATA_DIR": str(self.settings.data_dir),
            "HNR_DATASETS_DIR": str(self.mirror),
        }
        return Settings.from_env(env)

    def plan(self, profile: dict) -> set[tuple[str, str | None]]:
        """What the demo would materialize under `profile`."""
        plan = plan_demo(build_defs(self.settings_for(profile)), self.instance, run_tags=self.run_tags)
        return {(p.key.to_user_string(), None if p.partition is None else str(p.partition)) for p in plan if p.reason}

    def stale(self, settings: Settings) -> dict[str, list[str]]:
        """What the UI shows stale under `settings` (a code location started for the call)."""
        env = {"HNR_PROFILE": str(settings.profile_path), "HNR_DATA_DIR": str(settings.data_dir)}
        return ui_stale(self.instance, {**env, "HNR_DATASETS_DIR": str(self.mirror)})


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    folder = tmp_path_factory.mktemp("grid")
    mirror = folder / "mirror"
    make_tiny_dataset(mirror / "tiny-a", seed=1)
    make_tiny_dataset(mirror / "tiny-b", seed=2, prefix="b")
    with FakeOpenAIServer(model="fake-model") as server:
        path = _profile(folder / "e2e.yaml", server.url)
        env = {"HNR_PROFILE": str(path), "HNR_DATA_DIR": str(folder / "data"), "HNR_DATASETS_DIR": str(mirror)}
        settings = Settings.from_env(env)
        defs = build_defs(settings)
        home = init_dagster_home(folder / "dagster_home")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            first = run_demo(defs, instance, run_tags={"hnr/data_dir": str(settings.data_dir)})
            profile = yaml.safe_load(path.read_text())
            yield Grid(folder, mirror, profile, settings, defs, instance, first)


# ------------------------------------------------------------------------------------------ 1. the build


def _blocking_check_outcomes(instance: dg.DagsterInstance, defs: dg.Definitions) -> dict[str, list[bool]]:
    """Every evaluation of every blocking check, per check: passed or not."""
    graph = defs.resolve_asset_graph()
    outcomes: dict[str, list[bool]] = {}
    for check_key in graph.asset_check_keys:
        if not graph.get(check_key).blocking:
            continue
        history = instance.event_log_storage.get_asset_check_execution_history(check_key, limit=1000)
        evaluations = [r.event.dagster_event.event_specific_data for r in history if r.event]
        outcomes[check_key.to_user_string()] = [e.passed for e in evaluations]
    return outcomes


def test_every_asset_of_a_two_generator_grid_down_to_results(grid: Grid) -> None:
    defs, instance, steps = grid.defs, grid.instance, grid.first
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    blocking = _blocking_check_outcomes(instance, defs)
    pool_slots = instance.event_log_storage.get_concurrency_info("heavy")
    latest = instance.fetch_materializations(dg.AssetKey("results"), limit=1).records[0]
    results = {k: v.value for k, v in latest.asset_materialization.metadata.items()}
    client = defs.resources["mlflow"].client()
    experiment = client.get_experiment_by_name("hnr-e2e")
    runs = client.search_runs([experiment.experiment_id], "tags.`hnr/asset` = 'encoders'", max_results=100)

    recipes = [r.key for r in derive_recipes(GENERATORS)]
    systems = system_keys(GENERATORS)
    assert len(recipes) == 14 and len(systems) == 16
    graph = defs.resolve_asset_graph()
    expected = sum(
        len(graph.get(k).partitions_def.get_partition_keys()) if graph.get(k).partitions_def else 1
        for k in graph.toposorted_asset_keys
        if graph.get(k).is_materializable
    )
    assert [s.status for s in steps] == ["materialized"] * expected
    peaks = [s.peak_rss_mib for s in steps]  # the process high-water mark after each step: never decreases
    assert all(p and p > 0 for p in peaks) and peaks == sorted(peaks)
    assert expected == 2 + 1 + 4 + 2 + 2 * 2 + 2 + 14 + 1 + 14 + 16 * 2 + 1  # datasets .. results
    done = {(s.asset, s.partition) for s in steps}
    assert {("encoders", r) for r in recipes} <= done and ("results", None) in done

    # Every blocking check ran on every materialization and passed; the heavy steps gave their slot back.
    assert blocking and all(outcomes and all(outcomes) for outcomes in blocking.values()), blocking
    assert len(blocking["llm_negatives:schema"]) == 2 and len(blocking["scores:contract"]) == 32
    assert pool_slots.slot_count == 1 and pool_slots.active_slot_count == 0

    root = grid.settings.data_dir / "e2e"
    for generator in GENERATORS:
        summary = json.loads((root / "llm_negatives" / generator / "summary.json").read_text())
        assert summary["yield"] == 1.0, (generator, summary["rejection_reasons"])
    manifest = json.loads((root / "training_sets" / "all-llms+ce" / "manifest.json").read_text())
    assert manifest["common_pairs"] > 0 and manifest["stats"]["train_rows"] > 0

    # MLflow: one FINISHED training run per encoder, each registered, each holding its scores.
    assert sorted(r.data.tags["hnr/partition"] for r in runs) == sorted(recipes)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all({"eval/tiny-a/ndcg_at_10", "eval/tiny-b/ndcg_at_10"} <= set(r.data.metrics) for r in runs)

    # The study's table: a row per system, every cell scored, an average for each.
    table = pl.read_parquet(root / "results" / "results.parquet")
    assert table["system"].to_list() == systems
    assert table.select("tiny-a", "tiny-b", "average").null_count().row(0) == (0, 0, 0)
    assert results["cells_missing"] == 0 and results["cells_scored"] == 32


# ------------------------------------------------------------------------------------------ 2. staleness: plans


def _downstream(defs: dg.Definitions, seeds: dict[str, list[str] | None]) -> set[tuple[str, str | None]]:
    """The seed partitions and every partition below them, following the graph's child-side mappings."""
    graph = defs.resolve_asset_graph()
    todo = []
    for name, partitions in seeds.items():
        node = graph.get(dg.AssetKey(name))
        keys = partitions if partitions is not None else ([None] if node.partitions_def is None else ["*"])
        if keys == ["*"]:
            keys = [str(k) for k in node.partitions_def.get_partition_keys()]
        todo += [(dg.AssetKey(name), k) for k in keys]
    seen = set(todo)
    while todo:
        key, partition = todo.pop()
        for child in graph.get(key).child_keys:
            if not graph.get(child).is_partitioned:
                children = [None]
            else:
                children = [str(k) for k in graph.get_child_partition_keys_of_parent(partition, key, child)]
            for item in ((child, c) for c in children):
                if item not in seen:
                    seen.add(item)
                    todo.append(item)
    return {(k.to_user_string(), p) for k, p in seen}


def _edit(profile: dict, path: str, value: object) -> dict:
    edited = copy.deepcopy(profile)
    *parents, last = path.split(".")
    target = edited
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    target[last] = value
    return edited


# (setting, new value, what reads it directly: asset -> partitions); the plan must be these and their
# downstream. An empty mapping: no output reads the setting, nothing reruns.
CASES = [
    ("bm25.k1", 1.2, {"bm25_index": ALL, "bm25_negatives": ALL, "ce_negatives": ALL, "bm25_scores": ALL}),
    ("bm25.scores_depth", 50, {"bm25_scores": ALL}),
    ("mining.bm25_negatives.last_rank", 10, {"bm25_negatives": ALL}),
    ("cross_encoder.max_length", 48, {"cross_encoder": ALL, "ce_negatives": ALL, "llm_negatives_ce_scores": ALL}),
    ("mining.ce_negatives.candidates", 10, {"ce_negatives": ALL}),
    ("training_pairs.max_pairs", 20, {"training_pairs": ALL}),
    ("datasets.1.split", "train", {"datasets": ["tiny-b"]}),
    ("generators.0.seed", 3, {"generator_models": [LIST], "llm_negatives": [LIST]}),
    ("generators.0.sampling.temperature", 0.7, {"llm_negatives": [LIST]}),
    ("generators.1.prompt", "single-v2", {"llm_negatives": [SINGLE]}),
    ("generation.max_positive_words", 30, {"llm_negatives": ALL}),
    ("training.sets.validation_fraction", 0.3, {"training_sets": ALL}),
    ("training.base_encoder.max_seq_length", 40, {"base_encoder": ALL}),
    ("training.trainer.learning_rate", 5.0e-4, {"encoders": ALL}),
    ("evaluation.max_length", 48, {"scores": ALL}),
    ("evaluation.significance.alpha", 0.01, {"results": ALL}),
    ("evaluation.significance.confidence", 0.9, {"results": ALL}),
    # Fewer recipes: the others' training sets, encoders and scores stay as they are; the table changes.
    ("training.recipes", ["bm25", "ce", "llm-served-list"], {"results": ALL}),
    ("description", "another line", {"results": ALL}),  # the first line of results.md
    ("bm25.threads", 2, {}),
    ("cross_encoder.threads", 2, {}),
    ("generators.0.pairs_per_shard", 5, {}),
    ("generators.1.engine_options", {"concurrency": 2}, {}),
    ("generation.min_full_share", 0.5, {}),
    ("mining.min_full_share", 0.5, {}),
    ("evaluation.batch_size", 4, {}),
    ("evaluation.significance.min_recipes_beating_base", 1, {}),
    (
        "evaluation.references",
        [{"system": "bm25-retrieval", "dataset": "tiny-a", "value": 0.5, "source": "a test"}],
        {},
    ),
    ("training.trainer.logging_steps", 3, {}),
]


def test_an_unchanged_rerun_skips_every_partition(grid: Grid) -> None:
    again = run_demo(grid.defs, grid.instance, run_tags=grid.run_tags)
    assert [s.status for s in again] == ["up to date"] * len(grid.first)
    # The same content under another file name is the same profile; another data root is not.
    assert grid.plan(grid.profile) == set()
    other = plan_demo(grid.defs, grid.instance, run_tags={"hnr/data_dir": "/elsewhere"})
    assert all(planned.reason == "materialized by a run under other hnr/data_dir" for planned in other)


@pytest.mark.parametrize(("path", "value", "reads"), CASES, ids=[c[0] for c in CASES])
def test_an_edit_plans_exactly_what_reads_the_setting_and_its_downstream(
    grid: Grid, path: str, value: object, reads: dict
) -> None:
    edited = _edit(grid.profile, path, value)
    expected = _downstream(build_defs(grid.settings_for(edited)), reads) if reads else set()
    assert grid.plan(edited) == expected


# ------------------------------------------------------------------------------------------ 3. staleness: reruns


def test_real_reruns_match_the_plan_and_the_ui_agrees_before_and_after(grid: Grid) -> None:
    assert grid.stale(grid.settings) == {}  # the whole grid is current in the UI too

    # A shared setting (one asset's code version) and one dataset's own source.
    edited = _edit(_edit(grid.profile, "evaluation.significance.alpha", 0.01), "datasets.1.split", "train")
    settings = grid.settings_for(edited)
    defs = build_defs(settings)
    expected = _downstream(defs, {"results": ALL, "datasets": ["tiny-b"]})
    stale = grid.stale(settings)
    # The UI sees the new code version; a partition's own settings are not part of Dagster's code
    # version (docs/code-versions.md), so `datasets[tiny-b]` is shown current until the demo reruns it.
    assert stale == {"results": ["has a new code version"]}
    assert grid.stale(settings) == stale  # the same after a restart of the code location

    dry = run_demo(defs, grid.instance, run_tags=grid.run_tags, dry_run=True)
    planned = {(s.asset, s.partition and str(s.partition)) for s in dry if s.status == "would materialize"}
    assert planned == expected
    assert {s.reason for s in dry if s.asset == "datasets" and s.reason}.pop().startswith("settings changed")
    steps = run_demo(defs, grid.instance, run_tags=grid.run_tags)
    ran = {(s.asset, s.partition and str(s.partition)) for s in steps if s.status == "materialized"}
    assert ran == expected and len(ran) == 1 + 1 + 16 + 1  # datasets, bm25_scores, 16 systems, results

    assert grid.stale(settings) == {}
    again = run_demo(defs, grid.instance, run_tags=grid.run_tags)
    assert {s.status for s in again} == {"up to date"}

    # The settings hash is on every materialization and on the MLflow runs behind a score.
    record = grid.instance.fetch_materializations(dg.AssetKey("results"), limit=1).records[0]
    recorded = versions.recorded_hash(record.asset_materialization)
    assert recorded == defs.resolve_asset_graph().get(dg.AssetKey("results")).code_version
    client = defs.resources["mlflow"].client()
    run = client.get_run(record.asset_materialization.metadata["mlflow_run_id"].value)
    assert run.data.tags[TAG_SETTINGS_HASH] == recorded
    score = grid.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("scores"), asset_partitions=["tiny-b|bm25"]), limit=1
    ).records[0]
    encoder_run = client.get_run(score.asset_materialization.metadata["mlflow_run_id"].value)
    assert encoder_run.data.tags[f"{TAG_SETTINGS_HASH}/scores/tiny-b"] == versions.recorded_hash(
        score.asset_materialization
    )
    dataset = grid.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("datasets"), asset_partitions=["tiny-b"]), limit=1
    ).records[0]
    assert versions.recorded_hash(dataset.asset_materialization) == versions.settings_hash(
        load_profile(settings.profile_path), "datasets", "tiny-b"
    )


# ------------------------------------------------------------------------------------------ 4. automation


def _requested(result) -> dict[str, set[str]]:
    return {
        r.key.to_user_string(): {str(k) for k in r.true_subset.expensively_compute_partition_keys()}
        for r in result.results
        if r.true_subset.size
    }


def test_automation_refreshes_downstream_of_rewritten_negatives(grid: Grid) -> None:
    """Declarative automation over the finished grid when one generator's negatives are rewritten.

    Nothing on its first evaluation; after one generator's negatives change, its cross-encoder scores,
    every training set (same_queries: each uses the pairs all sets cover) and every encoder, in one tick
    (the sensor emits it as one backfill, which Dagster orders by dependency); nothing when that update
    is only seen after a daily tick passed; every score once an encoder updated.
    """
    defs, instance = grid.defs, grid.instance
    now = datetime.now(UTC)
    first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=now)
    # A new materialization of one partition (its shards are reused: nothing is generated again).
    dg.materialize(
        defs.assets, selection=["llm_negatives"], partition_key=LIST, instance=instance, resources=defs.resources
    )
    soon = dg.evaluate_automation_conditions(
        defs, instance, cursor=first.cursor, evaluation_time=now + timedelta(seconds=1)
    )
    # The same update seen only after a daily tick passed (the sensor was off meanwhile): dropped.
    next_midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    late = dg.evaluate_automation_conditions(
        defs, instance, cursor=first.cursor, evaluation_time=next_midnight + timedelta(hours=1)
    )
    # Once an encoder has updated (and none is in progress), every score, which reads all encoders.
    dg.materialize(
        defs.assets, selection=["encoders"], partition_key="bm25", instance=instance, resources=defs.resources
    )
    scores = dg.evaluate_automation_conditions(
        defs, instance, cursor=soon.cursor, evaluation_time=now + timedelta(seconds=2)
    )

    recipes = {r.key for r in derive_recipes(GENERATORS)}
    assert _requested(first) == {}
    assert _requested(soon) == {"llm_negatives_ce_scores": {LIST}, "training_sets": recipes, "encoders": recipes}
    assert _requested(late) == {}
    systems = system_keys(GENERATORS)
    assert _requested(scores) == {"scores": {f"{d}|{s}" for d in ("tiny-a", "tiny-b") for s in systems}}
