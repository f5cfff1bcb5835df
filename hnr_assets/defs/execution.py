"""How each asset runs: partitions per backfill run, concurrency pool, declarative automation.

One table (`POLICIES`) says it for every asset; the stages declare their assets with `hnr_asset`, which
fills it in (with the group, code version and checks), and partitioned assets that take several
partitions per run loop over them with `each_partition`. Jobs and the automation sensor are in
`hnr_assets/defs/jobs.py`.

- **Backfill policies.** Cheap partitioned assets (`datasets`, `bm25_scores`, `training_sets`) and
  `scores`, whose partitions are short when the embedding cache holds the corpus, take up to
  `PARTITIONS_PER_RUN` partitions per backfill run (one process start and one model/index load instead
  of eight). Generation, generator weights, cross-encoder scoring of LLM negatives and training take one
  partition per run: each is minutes to hours, and a failure then costs one partition.
- **Pool `heavy`.** Generation, cross-encoder mining and scoring, training and dense encoding hold the
  CPU cores or the GPU of the machine for their whole step. They share the pool `HEAVY_POOL`, limited to
  one step at a time by the instance (`concurrency.pools.default_limit: 1` in `hnr_assets/dagster.yaml`
  and `docker/dagster.yaml`; raise it with `dagster instance concurrency set heavy N` on a machine with
  N GPUs). Cheap assets have no pool and run side by side. On an instance with SQLite storage (`make dev`,
  `make demo`) a heavy step also holds one of the pool's host slots (`pool_host_slot`): Dagster 1.13's
  SQLite storage can give a pool's last slot to two steps that claim it in the same instant (its claim
  reads a free slot, then writes it, and SQLite ignores `FOR UPDATE`), which CI caught once.
- **Automation.** Assets downstream of the negative sets carry `refresh_condition()`: when an input
  changes (a generator's negatives rewritten, a training set rebuilt, an encoder retrained), the
  dependent partitions are requested, once their inputs are complete, not in progress and have passed
  their blocking checks. The sensor that evaluates it is off by default (`jobs.py`).
"""

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage, SqliteEventLogStorage

from hnr_assets.defs import versions
from hnr_assets.defs.checks import Check, problems_result
from hnr_assets.defs.partitions import partitions_of
from hnr_assets.lib.runtime.slots import hold_slot
from hnr_assets.profiles.schema import Profile

# `backfill_policy` is marked beta in Dagster 1.13 (stable in use since 1.5); its warning would be printed
# for every partitioned asset each time the code location loads.
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning)

HEAVY_POOL = "heavy"
PARTITIONS_PER_RUN = 8
# A pending refresh that could not start (an input missing or failing its blocking checks) is dropped at
# this tick when nothing it depends on is running; so is every update that happened while the sensor was
# off, if this tick passed in between (see `refresh_condition`).
REFRESH_EXPIRY_CRON = "0 0 * * *"


@dataclass(frozen=True)
class RunPolicy:
    """How one asset runs.

    Attributes:
        axis: Partition axis (`dataset`, `generator`, `recipe`, `system×dataset`), None when unpartitioned.
        partitions_per_run: Partitions one backfill run materializes (None when unpartitioned).
        heavy: Holds the machine's cores or GPU: runs in the `heavy` pool, one step at a time.
        refresh: Refreshed by declarative automation when its inputs change.
    """

    axis: str | None
    partitions_per_run: int | None
    heavy: bool = False
    refresh: bool = False


# The stages (Dagster asset groups, one folder of `hnr_assets/defs` each) and their assets, in order.
STAGES: dict[str, tuple[str, ...]] = {
    "datasets": ("datasets", "training_pairs"),
    "mining": ("bm25_index", "bm25_negatives", "cross_encoder", "ce_negatives", "bm25_scores"),
    "generation": ("generator_models", "llm_negatives"),
    "training": ("llm_negatives_ce_scores", "training_sets", "base_encoder", "encoders"),
    "evaluation": ("scores", "results"),
}
STAGE_OF = {asset: stage for stage, assets in STAGES.items() for asset in assets}

POLICIES: dict[str, RunPolicy] = {
    # datasets
    "datasets": RunPolicy("dataset", PARTITIONS_PER_RUN),
    "training_pairs": RunPolicy(None, None),
    # mining
    "bm25_index": RunPolicy(None, None),
    "bm25_negatives": RunPolicy(None, None),
    "cross_encoder": RunPolicy(None, None),
    "ce_negatives": RunPolicy(None, None, heavy=True),
    "bm25_scores": RunPolicy("dataset", PARTITIONS_PER_RUN),
    # generation
    "generator_models": RunPolicy("generator", 1, heavy=True),
    "llm_negatives": RunPolicy("generator", 1, heavy=True),
    # training
    "llm_negatives_ce_scores": RunPolicy("generator", 1, heavy=True, refresh=True),
    "training_sets": RunPolicy("recipe", PARTITIONS_PER_RUN, refresh=True),
    "base_encoder": RunPolicy(None, None),
    "encoders": RunPolicy("recipe", 1, heavy=True, refresh=True),
    # evaluation
    "scores": RunPolicy("system×dataset", PARTITIONS_PER_RUN, heavy=True, refresh=True),
    "results": RunPolicy(None, None, refresh=True),
}


def refresh_condition() -> dg.AutomationCondition:
    """`AutomationCondition.eager()` with the guards the Dagster docs recommend for expensive partitions.

    Requested when a dependency updated (or the partition became missing) since the partition was last
    requested or updated, and only once no dependency is missing or in progress, the partition itself
    is not in progress, and no dependency failed a blocking check. (Dagster's "Customizing eager" guide
    adds `all_deps_blocking_checks_passed()`; that is an `all_deps_match`, which is false for a partition
    that a dependency maps to no partition at all, as `llm_negatives_ce_scores` does for every recipe but
    the `-filtered` ones, so it would never refresh those recipes. `~any_deps_match(any check failed)`
    blocks on the same failures without that gap.)

    A change travels one partitions definition per tick: `llm_negatives[g]` updated requests
    `llm_negatives_ce_scores[g]`, every training set and every encoder (one backfill; Dagster orders it by
    dependency); `scores` follow once the encoders have updated and none is in progress, then `results`.

    Guard against a flood of runs: eager acts on every partition that became eligible while its sensor
    was off, and Dagster's guide "Preventing runs when reactivating a sensor" warns that for expensive
    workloads (GPU jobs) this "can produce thousands of unwanted runs the moment the sensor turns back
    on"; it gates dependency updates on a cron tick so that only updates made since the latest tick count
    (https://docs.dagster.io/guides/automate/declarative-automation/customizing-automation-conditions/preventing-runs-on-reactivation).
    Here the pending update is reset by `REFRESH_EXPIRY_CRON` (when nothing it waits on is running)
    as well as by a request, so updates made before a daily tick that passed while the sensor was off
    are ignored when it is switched back on. The guide's own condition (`any_deps_match(...).newly_true()`)
    fires on the first updated dependency only, which would refresh a training set after the first of
    several generators and never after the others; resetting the pending state keeps eager's "wait until
    all inputs are done". Runs are emitted as one backfill per tick (the sensor's `emit_backfills`), so
    they follow each asset's backfill policy and the `heavy` pool instead of starting all at once.
    """
    ac = dg.AutomationCondition
    handled = (ac.newly_requested() | ac.newly_updated() | ac.initial_evaluation()).with_label("handled")
    expired = (ac.cron_tick_passed(REFRESH_EXPIRY_CRON) & ~ac.in_progress() & ~ac.any_deps_in_progress()).with_label(
        f"expired at {REFRESH_EXPIRY_CRON}"
    )
    return (
        (ac.newly_missing() | ac.any_deps_updated()).since(handled | expired).with_label("inputs changed")
        & ~ac.any_deps_missing()
        & ~ac.any_deps_in_progress()
        & ~ac.in_progress()
        & ~ac.any_deps_match(ac.any_checks_match(ac.check_failed(), blocking_only=True)).with_label(
            "any dependency failed a blocking check"
        )
    ).with_label("refresh when inputs change")


def run_policy(asset: str) -> dict[str, object]:
    """Keyword arguments of `@dg.asset` for `asset`: `backfill_policy`, `pool`, `automation_condition`."""
    policy = POLICIES[asset]
    kwargs: dict[str, object] = {
        "pool": HEAVY_POOL if policy.heavy else None,
        "automation_condition": refresh_condition() if policy.refresh else None,
    }
    if policy.partitions_per_run:
        kwargs["backfill_policy"] = dg.BackfillPolicy.multi_run(policy.partitions_per_run)
    return kwargs


# The code version of every asset that does not pass its own: a string, or a callable of the profile and
# the asset name. `versions.code_version`: the asset's logic number and a hash of exactly the settings its
# output depends on (docs/code-versions.md).
CODE_VERSION: str | Callable[[Profile, str], str] = versions.code_version


def hnr_asset(
    name: str,
    profile: Profile,
    *,
    description: str,
    checks: Sequence[Check] = (),
    code_version: str | Callable[[Profile, str], str] | None = None,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """`@dg.asset` with what every hnr asset declares the same way.

    Fills the name, the group (its stage in `STAGES`), the partitions of the asset's axis in `POLICIES` and
    its run policy (backfill policy, pool, automation), the code version and the check specs; everything
    else (`deps`, `kinds`, ...) is passed on. Every materialization records the settings hash of its
    partition (`record_settings_hash`).

    Args:
        name: Asset name (a key of `POLICIES`).
        profile: The active profile (its lists are the partitions).
        description: Shown in the UI.
        checks: The asset's checks (`checks.contract`, `checks.quality`).
        code_version: A string, or a callable of the profile and the asset name; default `CODE_VERSION`.
        **kwargs: Further `dg.asset` arguments.
    """
    version = CODE_VERSION if code_version is None else code_version
    asset = dg.asset(
        name=name,
        group_name=STAGE_OF[name],
        description=description,
        code_version=version(profile, name) if callable(version) else version,
        check_specs=[check.spec(name) for check in checks] or None,
        partitions_def=partitions_of(POLICIES[name].axis, profile),
        **run_policy(name),
        **kwargs,
    )
    if POLICIES[name].heavy:
        return lambda fn: asset(in_pool_host_slot(HEAVY_POOL, record_settings_hash(profile, name, fn)))
    return lambda fn: asset(record_settings_hash(profile, name, fn))


@contextmanager
def pool_host_slot(instance: dg.DagsterInstance, pool: str, log: Any) -> Iterator[Path | None]:
    """Hold one of the `pool`'s slots on this host while a step of that pool runs.

    Only on an instance whose event log is in SQLite, which is one machine's instance: the lock files are
    `<DAGSTER_HOME>/pools/<pool>.<i>.lock`, as many as the pool's limit. Elsewhere (Postgres in the
    compose stack) and for a pool without a limit, nothing is held. A step that finds every slot taken
    although Dagster let it start logs a warning and waits.

    Yields:
        The lock file held, or None.
    """
    storage = instance.event_log_storage
    if not isinstance(storage, SqliteEventLogStorage | ConsolidatedSqliteEventLogStorage):
        yield None
        return
    limit = storage.get_concurrency_info(pool).limit
    if not limit:
        yield None
        return

    def waiting(paths: list[Path]) -> None:
        log.warning(
            f"every slot of pool {pool!r} on this host is held by another step ({paths[0].parent}), although "
            "Dagster let this step start (its SQLite storage can grant one slot to two steps claiming it at "
            "once); waiting for it to finish"
        )

    with hold_slot(Path(instance.root_directory) / "pools", pool, limit, on_wait=waiting) as path:
        yield path


def in_pool_host_slot(pool: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, an asset's body taking `context` first, run inside `pool_host_slot` of its instance."""

    @functools.wraps(fn)
    def body(context: dg.AssetExecutionContext, *args: Any, **kwargs: Any) -> Any:
        with pool_host_slot(context.instance, pool, context.log):
            return fn(context, *args, **kwargs)

    return body


def record_settings_hash(profile: Profile, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, an asset's body, with the settings hash of each partition it materializes in the metadata.

    The key is `versions.METADATA_KEY` and the value `versions.settings_hash(profile, name, partition)`,
    unless the body records its own (a run launched with other settings than the profile's records what
    it ran with). With several partitions in one step, the hashes are added before the body runs, so
    that what `each_partition` adds per partition afterwards wins.

    Raises:
        TypeError: The body does not take `context` first (the partition keys come from it).
    """
    if next(iter(inspect.signature(fn).parameters), None) != "context":
        raise TypeError(f"asset {name!r}: an hnr_asset body takes `context` as its first parameter")

    @functools.wraps(fn)
    def body(context: dg.AssetExecutionContext, *args: Any, **kwargs: Any) -> Any:
        keys = context.partition_keys if context.has_partition_key or context.has_partition_key_range else []
        if len(keys) > 1:
            for key in keys:
                context.add_asset_metadata({versions.METADATA_KEY: _hash(key)}, partition_key=key)
        result = fn(context, *args, **kwargs)
        if len(keys) > 1 or not isinstance(result, dg.MaterializeResult):
            return result
        recorded = {versions.METADATA_KEY: _hash(keys[0] if keys else None), **(result.metadata or {})}
        return result._replace(metadata=recorded)

    def _hash(key: str | None) -> str:
        return versions.settings_hash(profile, name, key)

    return body


def each_partition(
    context: dg.AssetExecutionContext, materialize: Callable[[str | dg.MultiPartitionKey], dg.MaterializeResult]
) -> dg.MaterializeResult:
    """Materialize every partition of the step: one, or a range when a backfill batches them.

    Each partition's metadata goes to its own materialization (`add_asset_metadata`). Check results
    are per step in Dagster, so with several partitions each check passes only if it passed for every
    partition, and its problems name the partition.

    Args:
        context: The asset's execution context.
        materialize: Materializes one partition key and returns its result (metadata, check results).

    Returns:
        The step's result.
    """
    keys = context.partition_keys
    if len(keys) == 1:
        return materialize(keys[0])
    results: dict[str, dg.MaterializeResult] = {}
    for number, key in enumerate(keys, 1):
        context.log.info(f"partition {key} ({number} of {len(keys)} in this run)")
        result = materialize(key)
        context.add_asset_metadata(dict(result.metadata or {}), partition_key=key)
        results[str(key)] = result
    return dg.MaterializeResult(check_results=combine_check_results(results))


def combine_check_results(results: dict[str, dg.MaterializeResult]) -> list[dg.AssetCheckResult]:
    """One result per check over several partitions: failed where any partition failed, with its reason."""
    by_check: dict[str, list[tuple[str, dg.AssetCheckResult]]] = {}
    for key, result in results.items():
        for check in result.check_results or []:
            by_check.setdefault(str(check.check_name), []).append((key, check))
    combined = []
    for name, outcomes in by_check.items():
        failed = [(key, check) for key, check in outcomes if not check.passed]
        problems = []
        for key, check in failed:
            text = check.metadata.get("problems")
            detail = text.value if isinstance(text, dg.MarkdownMetadataValue) else ""
            lines = [line.removeprefix("- ") for line in str(detail).splitlines() if line.strip()] or ["failed"]
            problems += [f"[{key}] {line}" for line in lines]
        severity = failed[0][1].severity if failed else outcomes[0][1].severity
        combined.append(
            problems_result(
                name,
                problems,
                severity=severity,
                partitions=len(outcomes),
                partitions_failed=len(failed),
            )
        )
    return combined
