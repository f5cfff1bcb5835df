"""The whole grid end to end: every asset, every partition, down to `results`, on a real instance.

The `test` profile's tiny random LMs write gibberish (every passage is rejected), so its recipes have no
common pairs and `training_sets` fails. Here the profile file written by the test keeps the `test`
profile's tiny datasets and models but serves its two generators (one asked for the study's five-as-JSON
list, one for a passage per completion) from the fake OpenAI-compatible server, which writes plausible
passages: all 14 recipes of two generators get trained, scored on both datasets and tabulated. The
Dagster instance is a real SQLite one with hnr's `dagster.yaml` (so every `heavy` step takes its slot in
the pool), the MLflow store a real SQLite one.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from hnr_assets.cli import init_dagster_home, run_demo
from hnr_assets.definitions import build_defs
from hnr_assets.lib.training.recipes import derive_recipes, system_keys
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings
from hnr_assets_tests.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.slow

GENERATORS = ["served-list", "served-single"]


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


def _requested(result) -> dict[str, set[str]]:
    return {
        r.key.to_user_string(): {str(k) for k in r.true_subset.expensively_compute_partition_keys()}
        for r in result.results
        if r.true_subset.size
    }


def _automation_after_new_negatives(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict:
    """Declarative automation over the finished grid when one generator's negatives are rewritten."""
    now = datetime.now(UTC)
    first = dg.evaluate_automation_conditions(defs, instance, evaluation_time=now)
    # A new materialization of one partition (its shards are reused: nothing is generated again).
    dg.materialize(
        defs.assets,
        selection=["llm_negatives"],
        partition_key="served-list",
        instance=instance,
        resources=defs.resources,
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
    return {
        "first": _requested(first),
        "soon": _requested(soon),
        "late": _requested(late),
        "scores": _requested(scores),
    }


def test_every_asset_of_a_two_generator_grid_down_to_results(tmp_path: Path, tiny_mirror: Path) -> None:
    with FakeOpenAIServer(model="fake-model") as server:
        settings = Settings.from_env(
            {
                "HNR_PROFILE": str(_profile(tmp_path / "e2e.yaml", server.url)),
                "HNR_DATA_DIR": str(tmp_path / "data"),
                "HNR_DATASETS_DIR": str(tiny_mirror),
            }
        )
        defs = build_defs(settings)
        home = init_dagster_home(tmp_path / "dagster_home")
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
            steps = run_demo(defs, instance)
            blocking = _blocking_check_outcomes(instance, defs)
            pool_slots = instance.event_log_storage.get_concurrency_info("heavy")
            latest = instance.fetch_materializations(dg.AssetKey("results"), limit=1).records[0]
            results = {k: v.value for k, v in latest.asset_materialization.metadata.items()}
            client = defs.resources["mlflow"].client()
            experiment = client.get_experiment_by_name("hnr-e2e")
            runs = client.search_runs([experiment.experiment_id], "tags.`hnr/asset` = 'encoders'", max_results=100)
            automation = _automation_after_new_negatives(defs, instance)  # materializes two more partitions

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

    root = settings.data_dir / "e2e"
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

    # Automation: nothing on its first evaluation; after one generator's negatives change, its cross-
    # encoder scores, every training set (same_queries: each uses the pairs all sets cover) and every
    # encoder, in one tick (the sensor emits it as one backfill, which Dagster orders by dependency);
    # nothing when that update is only seen after a daily tick passed; every score once an encoder updated.
    assert automation["first"] == {}
    assert automation["soon"] == {
        "llm_negatives_ce_scores": {"served-list"},
        "training_sets": set(recipes),
        "encoders": set(recipes),
    }
    assert automation["late"] == {}
    assert automation["scores"] == {"scores": {f"{d}|{s}" for d in ("tiny-a", "tiny-b") for s in systems}}
