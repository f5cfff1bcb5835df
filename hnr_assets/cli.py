"""Command line: `python -m hnr_assets.cli demo` materializes every asset of the active profile.

The demo runs in-process against the persistent Dagster instance under the data root (the one
`make dev` opens), so every materialization, its metadata and its checks show up in the UI afterwards.
A partition is skipped when it is up to date: its latest materialization came from a run under the same
data root, recorded the settings hash the profile gives it now (`hnr_assets.defs.versions`: its code
version and the settings of that one partition), and is newer than every materialization of the parent
partitions it depends on (Dagster's partition mappings); a partition whose parent reruns in the same
demo reruns after it. So an interrupted demo resumes where it stopped, and an edited profile reruns
exactly what the edit changes and everything downstream of it. `--force` reruns everything;
`--dry-run` lists what would run, and why, without running it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hnr_assets.lib.runtime.memory import peak_mib, release_free_memory, status_mib
from hnr_assets.lib.runtime.owner import HOST, TAG_HOST, Owner

log = logging.getLogger("hnr.demo")


@dataclass
class Step:
    asset: str
    partition: str | None
    status: str
    seconds: float
    peak_rss_mib: float | None = None
    stage: str = ""
    reason: str = ""


# CPU flags that decide the speed of the local profile (bf16 autocast, int8 kernels); shown with every run.
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def describe_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """`<model name>, <n> CPUs, flags: ...` (the flags of `CPU_FLAGS_SHOWN` the CPU has), for run reports."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"unknown CPU, {os.cpu_count()} CPUs"
    model, flags = "unknown CPU", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    shown = " ".join(f for f in CPU_FLAGS_SHOWN if f in flags) or "none of " + "/".join(CPU_FLAGS_SHOWN)
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs, flags: {shown}"


def stage_summary(steps: list[Step]) -> list[str]:
    """One line per stage (asset group): materializations and their summed seconds, in run order."""
    totals: dict[str, list[float]] = {}
    for step in steps:
        if step.status == "materialized":
            entry = totals.setdefault(step.stage or "-", [0, 0.0])
            entry[0] += 1
            entry[1] += step.seconds
    return [f"  {stage:<12} {int(n):4d} materialized {sec:9.1f} s" for stage, (n, sec) in totals.items()]


class _Records:
    """The latest materialization of each (asset, partition) and the runs they came from, read once."""

    def __init__(self, instance) -> None:
        self.instance = instance
        self._latest: dict = {}
        self._runs: dict = {}

    def latest(self, key, partition):
        import dagster as dg

        slot = (key, None if partition is None else str(partition))
        if slot not in self._latest:
            result = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
            )
            self._latest[slot] = result.records[0] if result.records else None
        return self._latest[slot]

    def run_tags(self, run_id: str) -> dict[str, str] | None:
        if run_id not in self._runs:
            run = self.instance.get_run_by_id(run_id)
            self._runs[run_id] = dict(run.tags) if run is not None else None
        return self._runs[run_id]


def parent_partitions(graph, key, partition, parent) -> list:
    """The partitions of `parent` that `key` (`partition`) depends on, by the asset graph's partition mapping."""
    if not graph.get(parent).is_partitioned:
        return [None]
    subset = graph.get_parent_partition_keys_for_child(partition, parent, key).partitions_subset
    return sorted(subset.get_partition_keys(), key=str)


def stale_reason(
    records: _Records,
    graph,
    key,
    partition,
    expected: str | None,
    run_tags: dict[str, str] | None = None,
    planned: frozenset | set = frozenset(),
) -> str | None:
    """Why the partition must be materialized, or None when it is up to date.

    Args:
        records: Latest materializations of the instance.
        graph: The asset graph of the definitions.
        key: The asset.
        partition: Its partition (None when unpartitioned).
        expected: The settings hash a current materialization records (`versions.current_hash`).
        run_tags: The latest materialization must come from a run with these tags (the demo tags its
            runs with the data root: outputs under another data root are not these).
        planned: `(asset key, partition)` pairs that rerun before this one in the same demo.
    """
    from hnr_assets.defs import versions

    record = records.latest(key, partition)
    if record is None:
        return "never materialized"
    if run_tags:
        tags = records.run_tags(record.run_id)
        if tags is None or any(tags.get(k) != v for k, v in run_tags.items()):
            return "materialized by a run under other " + ", ".join(run_tags)
    recorded = versions.recorded_hash(record.asset_materialization)
    if expected is not None and recorded != expected:
        return f"settings changed (materialized with {recorded or 'no settings hash'}, now {expected})"
    for parent in sorted(graph.get(key).parent_keys, key=str):
        for upstream in parent_partitions(graph, key, partition, parent):
            name = parent.to_user_string() + (f"[{upstream}]" if upstream is not None else "")
            if (parent, None if upstream is None else str(upstream)) in planned:
                return f"{name} reruns first"
            parent_record = records.latest(parent, upstream)
            if parent_record is not None and parent_record.timestamp > record.timestamp:
                return f"{name} was materialized after it"
    return None


class Planned(NamedTuple):
    """One (asset, partition) of the demo's plan: why it must be materialized (None: up to date)."""

    key: Any
    partition: Any
    reason: str | None
    stage: str


def plan_demo(
    defs, instance, *, force: bool = False, select: list[str] | None = None, run_tags: dict[str, str] | None = None
) -> list[Planned]:
    """Every (asset key, partition) of `defs` in dependency order, with the reason to materialize it.

    Args:
        defs: The `dg.Definitions`.
        instance: The Dagster instance.
        force: Materialize everything.
        select: Only these asset names (default: all).
        run_tags: See `stale_reason`.

    Returns:
        One `Planned` per (asset key, partition); the reason is None for an up-to-date partition.
    """
    from hnr_assets.defs import versions

    graph = defs.resolve_asset_graph()
    records = _Records(instance)
    planned: set = set()
    plan = []
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable or (select and key.to_user_string() not in select):
            continue
        partitions = list(node.partitions_def.get_partition_keys()) if node.partitions_def else [None]
        for partition in partitions:
            expected = versions.current_hash(defs, node, partition)
            reason = "forced" if force else stale_reason(records, graph, key, partition, expected, run_tags, planned)
            if reason is not None:
                planned.add((key, None if partition is None else str(partition)))
            plan.append(Planned(key, partition, reason, node.group_name or ""))
    return plan


# Assets whose materializations may hold rate probes (`runtime.rate_probes`, `hnr_assets.defs.rates`).
PROBING_ASSETS = ("ce_negatives", "llm_negatives", "encoders", "scores")


def probe_rows(defs, instance, steps: list[Step] | None = None) -> list[tuple[str, str | None, dict]]:
    """The rate probes recorded by the latest materializations, as `(asset stage, partition, fields)` rows.

    Args:
        defs: The `dg.Definitions` (which partitions exist).
        instance: The Dagster instance to read the materializations from.
        steps: Only these demo steps (those that materialized); None: every partition of the probing assets.
    """
    import dagster as dg

    from hnr_assets.lib.runtime.rates import read_probes

    graph = defs.resolve_asset_graph()
    if steps is not None:
        wanted = [(s.asset, s.partition) for s in steps if s.status == "materialized" and s.asset in PROBING_ASSETS]
    else:
        wanted = []
        for name in PROBING_ASSETS:
            key = dg.AssetKey(name)
            if not graph.has(key):
                continue
            node = graph.get(key)
            keys = list(node.partitions_def.get_partition_keys()) if node.partitions_def else [None]
            wanted += [(name, None if k is None else str(k)) for k in keys]
    records = _Records(instance)
    rows = []
    for name, partition in wanted:
        record = records.latest(dg.AssetKey(name), partition)
        found = read_probes(record.asset_materialization.metadata or {}) if record else {}
        rows += [(f"{name} {stage}", partition, fields) for stage, fields in found.items()]
    return rows


def rates_report(defs, instance, steps: list[Step] | None = None) -> list[str]:
    """Lines of the rate-probe table; for the demo's `steps`, none when no probe ran, else a note."""
    from hnr_assets.lib.runtime.rates import probe_table

    rows = probe_rows(defs, instance, steps)
    if not rows:
        return (
            []
            if steps is not None
            else ["rate probes: none recorded (set `runtime.rate_probes.enabled: true` in the profile)"]
        )
    return [
        "rate probes (hnr against its baseline on the same sample, same process; ratio > 1: hnr faster):",
        probe_table(rows),
    ]


def release_dead_demo_runs(instance) -> list[str]:
    """Mark FAILED the demo runs whose process died (SIGKILL, OOM) and free their concurrency slots.

    A demo run executes in the demo's own process; killed outright, it stays STARTED and keeps its slot
    in the `heavy` pool (limit 1), so the next demo would wait for it forever. Runs of a live process, or
    of another host, are left alone.

    Returns:
        The run ids released.
    """
    import dagster as dg
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    released = []
    runs = instance.get_runs(
        dg.RunsFilter(
            statuses=[s for s in dg.DagsterRunStatus if s not in FINISHED_STATUSES],
            tags={"hnr/launched_by": "demo", TAG_HOST: HOST},
        )
    )
    for run in runs:
        owner = Owner.from_tags(run.tags)
        if owner is None or owner.is_current or owner.alive():
            continue
        instance.report_run_failed(run, f"its process {owner.pid} on {HOST} ended without finishing the run")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def run_demo(
    defs,
    instance,
    *,
    force: bool = False,
    select: list[str] | None = None,
    run_tags: dict[str, str] | None = None,
    dry_run: bool = False,
) -> list[Step]:
    """Materialize every asset (every partition) of `defs` that is not up to date, in dependency order.

    Args:
        defs: The `dg.Definitions` to run.
        instance: The Dagster instance that records the runs.
        force: Rerun partitions that are up to date.
        select: Only these asset names (default: all).
        run_tags: Tags put on every run; a partition counts as up to date only if its latest
            materialization came from a run with the same tags.
        dry_run: Only say what would be materialized (status `would materialize`, with the reason).

    Returns:
        One `Step` per (asset, partition).
    """
    import dagster as dg

    released = release_dead_demo_runs(instance)
    if released:
        log.warning("marked FAILED %d demo runs whose process had died, freeing their pool slots", len(released))
    owner = Owner.current().tags()
    steps: list[Step] = []
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    for key, partition, reason, stage in plan_demo(defs, instance, force=force, select=select, run_tags=run_tags):
        name = key.to_user_string()
        if reason is None:
            log.info("%s [%s]: up to date, skipped", name, partition or "-")
            steps.append(Step(name, partition, "up to date", 0.0, stage=stage))
            continue
        if dry_run:
            log.info("%s [%s]: would materialize (%s)", name, partition or "-", reason)
            steps.append(Step(name, partition, "would materialize", 0.0, stage=stage, reason=reason))
            continue
        log.info("%s [%s]: materializing (%s)", name, partition or "-", reason)
        started = time.perf_counter()
        dg.materialize(
            defs.assets,
            selection=[key],
            partition_key=partition,
            instance=instance,
            resources=defs.resources,
            run_config=run_config,
            tags={"hnr/launched_by": "demo", **owner, **(run_tags or {})},
        )
        seconds = time.perf_counter() - started
        release_free_memory()  # glibc keeps GiBs of freed heap after training otherwise
        peak = peak_mib()
        resident = status_mib("VmRSS")
        log.info(
            "%s [%s]: done in %.1f s (RSS %s MiB, peak so far %.0f MiB)",
            name,
            partition or "-",
            seconds,
            f"{resident:.0f}" if resident is not None else "?",
            peak,
        )
        steps.append(Step(name, partition, "materialized", seconds, peak, stage, reason))
    return steps


# sha256 of every `dagster.yaml` hnr shipped before the current one: an unmodified copy of one of them in
# DAGSTER_HOME is replaced by `init` (it lacked the concurrency pools); a file a user edited is kept.
EARLIER_DAGSTER_YAML_SHA256 = frozenset({"eea318122413c8ae0c8b9732e4c7b95db59df2b172784780da74e65c6eb94f95"})


def init_dagster_home(dagster_home: Path) -> Path:
    """Create DAGSTER_HOME with hnr's `dagster.yaml`, or bring an unmodified earlier copy up to date."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    shipped = Path(__file__).with_name("dagster.yaml")
    if not config.exists():
        shutil.copyfile(shipped, config)
    elif hashlib.sha256(config.read_bytes()).hexdigest() in EARLIER_DAGSTER_YAML_SHA256:
        log.info("%s: replacing hnr's earlier default with the current one (adds the concurrency pools)", config)
        shutil.copyfile(shipped, config)
    elif "concurrency:" not in config.read_text(encoding="utf-8"):
        log.warning(
            "%s has no `concurrency` section: the `heavy` pool is unlimited, so generation, training and "
            "encoding may run at the same time; see %s",
            config,
            shipped,
        )
    return dagster_home


def submit_backfill(
    defs, instance, *, select: list[str] | None = None, partitions: list[str] | None = None, title: str = ""
) -> str:
    """Submit an asset backfill to `instance` for its daemon to run; returns the backfill id.

    This is how the whole grid runs end to end under the daemon (`make dev`): one backfill over assets
    partitioned in different ways, which no single Dagster job can hold. The daemon materializes each
    partition once its parents' partitions in the backfill are done, with each asset's backfill policy
    and concurrency pool; the UI shows it under Runs > Backfills. Same request as the UI's "Materialize
    all" (GraphQL `launchPartitionBackfill` with an asset selection).

    Args:
        defs: The `dg.Definitions` (their asset graph).
        instance: The Dagster instance the daemon serves.
        select: Asset names (default: every materializable asset).
        partitions: Partition keys of the selection's partitioned assets when they all share one
            partitions definition (default: every partition of every asset).
        title: Shown in the UI.

    Returns:
        The backfill id.
    """
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from hnr_assets.lib.runtime.errors import ConfigError

    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]
    if select:
        unknown = sorted(set(select) - {k.to_user_string() for k in keys})
        if unknown:
            raise ConfigError(f"unknown assets {unknown}; known: {', '.join(k.to_user_string() for k in keys)}")
        keys = [k for k in keys if k.to_user_string() in select]
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=graph,
        partition_names=partitions,
        asset_selection=keys,
        backfill_timestamp=time.time(),
        tags={"hnr/launched_by": "cli backfill"},
        dynamic_partitions_store=instance,
        all_partitions=not partitions,
        title=title or ("hnr: " + (", ".join(select) if select else "every asset, every partition")),
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnr_assets.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize every asset of the active profile")
    demo.add_argument("--force", action="store_true", help="rerun partitions that are up to date")
    demo.add_argument("--select", default="", help="comma-separated asset names (default: all)")
    demo.add_argument("--dry-run", action="store_true", help="list what would be materialized and why; run nothing")
    sub.add_parser("init", help="create DAGSTER_HOME under the data root")
    backfill = sub.add_parser(
        "backfill", help="submit an asset backfill (default: everything) for the daemon of `make dev` to run"
    )
    backfill.add_argument("--select", default="", help="comma-separated asset names (default: all)")
    backfill.add_argument("--partitions", default="", help="comma-separated partition keys (default: all)")
    sub.add_parser("rates", help="print the rate probes of the latest materializations (runtime.rate_probes)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from hnr_assets.settings import Settings

    settings = Settings.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    init_dagster_home(Path(os.environ["DAGSTER_HOME"]))
    if args.command == "init":
        return 0

    import dagster as dg

    from hnr_assets.definitions import build_defs

    defs = build_defs(settings)
    if args.command == "backfill":
        with dg.DagsterInstance.get() as instance:
            backfill_id = submit_backfill(
                defs,
                instance,
                select=[s for s in args.select.split(",") if s] or None,
                partitions=[p for p in args.partitions.split(",") if p] or None,
            )
        sys.stdout.write(
            f"backfill {backfill_id} submitted to DAGSTER_HOME={os.environ['DAGSTER_HOME']}; the daemon of "
            f"`make dev` runs it: Runs > Backfills in the UI (/runs/b/{backfill_id})\n"
        )
        return 0
    if args.command == "rates":
        with dg.DagsterInstance.get() as instance:
            sys.stdout.write("\n".join(rates_report(defs, instance)) + "\n")
        return 0
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        steps = run_demo(
            defs,
            instance,
            force=args.force,
            select=[s for s in args.select.split(",") if s] or None,
            # Outputs live under the data root; the profile file's content, not its path, is in the versions.
            run_tags={"hnr/data_dir": str(settings.data_dir)},
            dry_run=args.dry_run,
        )
        probes = [] if args.dry_run else rates_report(defs, instance, steps)
    wall = time.perf_counter() - started
    ran = [s for s in steps if s.status != "up to date"]
    verb = "would be materialized" if args.dry_run else "materialized"
    lines = [f"demo of profile {settings.profile!r}: {len(ran)} {verb}, {len(steps) - len(ran)} up to date"]
    lines += [
        f"  {s.asset:<24} {s.partition or '-':<32} {s.status:<17} {s.seconds:8.1f} s"
        + (f"  peak RSS so far {s.peak_rss_mib:6.0f} MiB" if s.peak_rss_mib is not None else "")
        + (f"  ({s.reason})" if s.reason else "")
        for s in steps
    ]
    lines.append("time per stage:")
    lines += stage_summary(steps)
    lines.append(f"wall time {wall:.1f} s, peak RSS {peak_mib():.0f} MiB; data root {settings.data_dir}")
    lines.append(f"CPU: {describe_cpu()}")
    from hnr_assets.profiles import load_profile

    table = settings.data_dir / load_profile(settings.profile_path).name / "results" / "results.md"
    if table.is_file():
        lines.append(f"results ({table}):")
        lines.append(table.read_text(encoding="utf-8").split("\n\nPaired comparisons:", 1)[0])
    lines += probes
    lines.append(f"open the UI with `make dev` (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
