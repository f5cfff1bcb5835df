"""Exact staleness on a materialized grid: an edited profile reruns what the edit changes and its downstream.

One grid for the module: the `test` profile's tiny datasets and models with its two generators served by
the fake OpenAI-compatible server (`test_end_to_end.py` says why), one training step per encoder,
materialized by the demo on a real SQLite Dagster instance with hnr's `dagster.yaml` and a real MLflow
store. For every asset, an edit of a setting it reads must plan exactly that asset's affected partitions
and everything downstream of them (computed here from the asset graph's child mappings, independently
of the demo's parent-side test), an edit of a setting no output reads must plan nothing. The last test
reruns for real, checks that the demo materializes what it planned, and that the UI's stale status
(GraphQL `assetNodes`, served from a code location in its own process, restarted in between) agrees
before and after; it leaves the grid under its edited profile, so it runs last.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hnr_assets.cli import init_dagster_home, plan_demo, run_demo
from hnr_assets.definitions import build_defs
from hnr_assets.defs import versions
from hnr_assets.settings import Settings
from hnr_assets_tests.defs.test_end_to_end import GENERATORS, _profile
from hnr_assets_tests.fixtures import make_tiny_dataset
from hnr_assets_tests.openai_server import FakeOpenAIServer
from hnr_assets_tests.ui_status import ui_stale

pytestmark = pytest.mark.slow

LIST, SINGLE = GENERATORS


@dataclass
class Grid:
    folder: Path
    mirror: Path
    profile: dict
    settings: Settings
    instance: dg.DagsterInstance
    first: list
    edits: int = 0

    @property
    def run_tags(self) -> dict[str, str]:
        return {"hnr/data_dir": str(self.settings.data_dir)}

    def settings_for(self, profile: dict) -> Settings:
        """Settings over the same data root and mirror, with `profile` written to a file of its own."""
        self.edits += 1
        path = self.folder / f"edited-{self.edits}.yaml"
        path.write_text(yaml.safe_dump(profile, sort_keys=False))
        return Settings.from_env(
            {
                "HNR_PROFILE": str(path),
                "HNR_DATA_DIR": str(self.settings.data_dir),
                "HNR_DATASETS_DIR": str(self.mirror),
            }
        )

    def plan(self, profile: dict) -> set[tuple[str, str | None]]:
        defs = build_defs(self.settings_for(profile))
        plan = plan_demo(defs, self.instance, run_tags=self.run_tags)
        return {(k.to_user_string(), None if p is None else str(p)) for k, p, reason in plan if reason is not None}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    folder = tmp_path_factory.mktemp("grid")
    mirror = folder / "mirror"
    make_tiny_dataset(mirror / "tiny-a", seed=1)
    make_tiny_dataset(mirror / "tiny-b", seed=2, prefix="b")
    with FakeOpenAIServer(model="fake-model") as server:
        path = _profile(folder / "grid.yaml", server.url)
        profile = yaml.safe_load(path.read_text())
        profile["training"]["trainer"].update(max_steps=1, eval_steps=1)  # the grid, not the training, is tested
        path.write_text(yaml.safe_dump(profile, sort_keys=False))
        settings = Settings.from_env(
            {"HNR_PROFILE": str(path), "HNR_DATA_DIR": str(folder / "data"), "HNR_DATASETS_DIR": str(mirror)}
        )
        home = init_dagster_home(folder / "dagster_home")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            tags = {"hnr/data_dir": str(settings.data_dir)}
            first = run_demo(build_defs(settings), instance, run_tags=tags)
            yield Grid(folder, mirror, profile, settings, instance, first)


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


ALL = None  # every partition of a partitioned asset (or the asset, unpartitioned)

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
    ("description", "another line", {}),
    ("bm25.threads", 2, {}),
    ("cross_encoder.threads", 2, {}),
    ("generators.0.pairs_per_shard", 5, {}),
    ("generators.1.engine_options", {"concurrency": 2}, {}),
    ("generation.min_full_share", 0.5, {}),
    ("mining.min_full_share", 0.5, {}),
    ("evaluation.batch_size", 4, {}),
    (
        "evaluation.references",
        [{"system": "bm25-retrieval", "dataset": "tiny-a", "value": 0.5, "source": "a test"}],
        {},
    ),
    ("training.trainer.logging_steps", 3, {}),
]


def test_the_demo_built_the_grid_and_an_unchanged_rerun_skips_every_partition(grid: Grid) -> None:
    assert grid.first and {s.status for s in grid.first} == {"materialized"}
    again = run_demo(build_defs(grid.settings), grid.instance, run_tags=grid.run_tags)
    assert [s.status for s in again] == ["up to date"] * len(grid.first)
    # The same content under another file name is the same profile; another data root is not.
    assert grid.plan(grid.profile) == set()
    other = plan_demo(build_defs(grid.settings), grid.instance, run_tags={"hnr/data_dir": "/elsewhere"})
    assert all(reason == "materialized by a run under other hnr/data_dir" for _, _, reason in other)


@pytest.mark.parametrize(("path", "value", "reads"), CASES, ids=[c[0] for c in CASES])
def test_an_edit_plans_exactly_what_reads_the_setting_and_its_downstream(
    grid: Grid, path: str, value: object, reads: dict
) -> None:
    edited = _edit(grid.profile, path, value)
    expected = _downstream(build_defs(grid.settings_for(edited)), reads) if reads else set()
    assert grid.plan(edited) == expected


def _stale(grid: Grid, settings: Settings) -> dict[str, list[str]]:
    env = {"HNR_PROFILE": str(settings.profile_path), "HNR_DATA_DIR": str(settings.data_dir)}
    return ui_stale(grid.instance, {**env, "HNR_DATASETS_DIR": str(grid.mirror)})


def test_real_reruns_match_the_plan_and_the_ui_agrees_before_and_after(grid: Grid) -> None:
    assert _stale(grid, grid.settings) == {}  # the whole grid is current in the UI too

    # A shared setting (one asset's code version) and one dataset's own source.
    edited = _edit(_edit(grid.profile, "evaluation.significance.alpha", 0.01), "datasets.1.split", "train")
    settings = grid.settings_for(edited)
    defs = build_defs(settings)
    expected = _downstream(defs, {"results": ALL, "datasets": ["tiny-b"]})
    stale = _stale(grid, settings)
    # The UI sees the new code version; a partition's own settings are not part of Dagster's code
    # version (docs/code-versions.md), so `datasets[tiny-b]` is shown current until the demo reruns it.
    assert stale == {"results": ["has a new code version"]}
    assert _stale(grid, settings) == stale  # the same after a restart of the code location

    dry = run_demo(defs, grid.instance, run_tags=grid.run_tags, dry_run=True)
    planned = {(s.asset, s.partition and str(s.partition)) for s in dry if s.status == "would materialize"}
    assert planned == expected
    assert {s.reason for s in dry if s.asset == "datasets" and s.reason}.pop().startswith("settings changed")
    steps = run_demo(defs, grid.instance, run_tags=grid.run_tags)
    ran = {(s.asset, s.partition and str(s.partition)) for s in steps if s.status == "materialized"}
    assert ran == expected and len(ran) == 1 + 1 + 16 + 1  # datasets, bm25_scores, 16 systems, results

    assert _stale(grid, settings) == {}
    again = run_demo(defs, grid.instance, run_tags=grid.run_tags)
    assert {s.status for s in again} == {"up to date"}

    # The settings hash is on every materialization and on the MLflow runs behind a score.
    record = grid.instance.fetch_materializations(dg.AssetKey("results"), limit=1).records[0]
    recorded = versions.recorded_hash(record.asset_materialization)
    assert recorded == defs.resolve_asset_graph().get(dg.AssetKey("results")).code_version
    client = defs.resources["mlflow"].client()
    run = client.get_run(record.asset_materialization.metadata["mlflow_run_id"].value)
    assert run.data.tags[versions.MLFLOW_TAG] == recorded
    score = grid.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("scores"), asset_partitions=["tiny-b|bm25"]), limit=1
    ).records[0]
    encoder_run = client.get_run(score.asset_materialization.metadata["mlflow_run_id"].value)
    assert encoder_run.data.tags[f"{versions.MLFLOW_TAG}/scores/tiny-b"] == versions.recorded_hash(
        score.asset_materialization
    )
