"""Jobs per stage and the automation sensor, built from the assets every stage defines.

A Dagster job runs one partition key (or a range of them) of one partitions definition: "Selected
assets must have the same partitions definitions" is an error when a job's assets are partitioned
differently. A stage whose assets are partitioned along several axes therefore gets one job per axis:
`<stage>_job` for its unpartitioned assets and `<stage>_per_<axis>_job` for the others (e.g.
`training_job` = `base_encoder`, `training_per_generator_job` = `llm_negatives_ce_scores`,
`training_per_recipe_job` = `training_sets` + `encoders`). Every asset is in exactly one stage job.

The whole grid end to end spans five partitions definitions, so it is an asset backfill rather than a
job: `python -m hnr_assets.cli backfill` (or "Materialize all" on the asset graph in the UI) submits
every partition of every asset; the daemon runs them in dependency order, each asset with its backfill
policy and pool (`hnr_assets/defs/execution.py`).
"""

import warnings
from collections.abc import Iterable

import dagster as dg

from hnr_assets.defs.execution import POLICIES, STAGES

# `training_per_recipe_job` holds `training_sets` (8 partitions per backfill run) and `encoders` (1): Dagster
# warns, then uses the smaller, which is what a job that builds a recipe's set and trains on it should do.
warnings.filterwarnings("ignore", message=r"Asset job \w+ materializes assets with varying BackfillPolicies")

STAGE_ORDER = tuple(STAGES)
REFRESH_SENSOR = "refresh_downstream_of_negatives"


def job_name(stage: str, axis: str | None) -> str:
    """`<stage>_job` (unpartitioned assets) or `<stage>_per_<axis>_job` (`system×dataset` -> `system_dataset`).

    The `_job` suffix keeps job names apart from asset names (`datasets` is both a stage and an asset;
    Dagster refuses a job and an op of the same name).
    """
    return f"{stage}_job" if axis is None else f"{stage}_per_{axis.replace('×', '_')}_job"


def stage_jobs(assets: Iterable[dg.AssetsDefinition]) -> list:
    """One job per (stage, partition axis), in stage order then in the order the stage defines its assets.

    Args:
        assets: The assets of every stage.

    Returns:
        The (unresolved) jobs; each selects assets that share one partitions definition.
    """
    members: dict[tuple[str, str | None], list[str]] = {}
    for assets_def in assets:
        for key in assets_def.keys:
            name = key.to_user_string()
            members.setdefault((assets_def.group_names_by_key[key], POLICIES[name].axis), []).append(name)
    ordered = sorted(members, key=lambda ga: STAGE_ORDER.index(ga[0]) if ga[0] in STAGE_ORDER else 99)
    jobs = []
    for stage, axis in ordered:
        names = members[(stage, axis)]
        jobs.append(
            dg.define_asset_job(
                job_name(stage, axis),
                selection=dg.AssetSelection.assets(*names),
                description=(
                    f"Stage `{stage}`: {', '.join(names)}"
                    + (f" (one {axis} partition per run, or a backfill over several)." if axis else ".")
                ),
                tags={"hnr/stage": stage},
            )
        )
    return jobs


def refresh_sensor() -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the assets' `refresh_condition()`; STOPPED until switched on in the UI.

    Off by default: in the `local` profile one rewritten negative set makes 14 training sets, 14 encoders
    and 80 score partitions stale, hours of CPU; nobody should start that by merely opening the UI.
    `emit_backfills` turns a tick that requests several partitions into one backfill, which follows the
    assets' backfill policies and pools.
    """
    refreshed = [name for name, policy in POLICIES.items() if policy.refresh]
    return dg.AutomationConditionSensorDefinition(
        REFRESH_SENSOR,
        target=dg.AssetSelection.assets(*refreshed),
        default_status=dg.DefaultSensorStatus.STOPPED,
        emit_backfills=True,
        minimum_interval_seconds=60,
        description=(
            "Refreshes what depends on the negative sets (cross-encoder scores of LLM negatives, training "
            "sets, encoders, scores, results) when an input changes. Off by default: switching it on can "
            "start hours of training and encoding; check the stale partitions on the asset graph first."
        ),
    )


def build_defs(assets: Iterable[dg.AssetsDefinition]) -> dg.Definitions:
    """Jobs per stage and the refresh sensor for `assets` (every stage's)."""
    return dg.Definitions(jobs=stage_jobs(assets), sensors=[refresh_sensor()])
