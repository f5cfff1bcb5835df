"""Command line: `python -m hnr_assets.cli demo` materializes every asset of the active profile.

The demo runs in-process against the persistent Dagster instance under the data root (the one
`make dev` opens), so every materialization, its metadata and its checks show up in the UI afterwards.
A partition whose latest materialization has the current code version and is newer than every
materialization of its parents is skipped, so an interrupted demo resumes where it stopped; `--force`
reruns everything.
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


def _latest_record(instance, key, partition):
    import dagster as dg

    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1
    )
    return result.records[0] if result.records else None


def _latest_any(instance, key):
    import dagster as dg

    result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1)
    return result.records[0] if result.records else None


def is_up_to_date(
    instance, graph, key, partition, code_version: str | None, run_tags: dict[str, str] | None = None
) -> bool:
    """True when the partition was materialized with this code version after all of its parents.

    With `run_tags`, the latest materialization must also come from a run carrying those tags (the
    demo tags its runs with the profile and the data root, so that switching either reruns the asset
    instead of trusting a materialization whose files live elsewhere).
    """
    record = _latest_record(instance, key, partition)
    if record is None:
        return False
    if run_tags:
        run = instance.get_run_by_id(record.run_id)
        if run is None or any(run.tags.get(k) != v for k, v in run_tags.items()):
            return False
    mat = record.asset_materialization
    recorded_version = (mat.tags or {}).get("dagster/code_version") if mat else None
    if code_version is not None and recorded_version != code_version:
        return False
    for parent in graph.get(key).parent_keys:
        parent_record = _latest_any(instance, parent)
        if parent_record is not None and parent_record.timestamp > record.timestamp:
            return False
    return True


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
) -> list[Step]:
    """Materialize every asset (every partition) of `defs` in dependency order.

    Args:
        defs: The `dg.Definitions` to run.
        instance: The Dagster instance that records the runs.
        force: Rerun partitions that are up to date.
        select: Only these asset names (default: all).
        run_tags: Tags put on every run; a partition counts as up to date only if its latest
            materialization came from a run with the same tags.

    Returns:
        One `Step` per (asset, partition).
    """
    import dagster as dg

    graph = defs.resolve_asset_graph()
    released = release_dead_demo_runs(instance)
    if released:
        log.warning("marked FAILED %d demo runs whose process had died, freeing their pool slots", len(released))
    owner = Owner.current().tags()
    steps: list[Step] = []
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable or (select and key.to_user_string() not in select):
            continue
        pdef = node.partitions_def
        partitions = list(pdef.get_partition_keys()) if pdef else [None]
        for partition in partitions:
            name = key.to_user_string()
            if not force and is_up_to_date(instance, graph, key, partition, node.code_version, run_tags):
                log.info("%s [%s]: up to date, skipped", name, partition or "-")
                steps.append(Step(name, partition, "up to date", 0.0, stage=node.group_name or ""))
                continue
            log.info("%s [%s]: materializing", name, partition or "-")
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
            steps.append(Step(name, partition, "materialized", seconds, peak, stage=node.group_name or ""))
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
    sub.add_parser("init", help="create DAGSTER_HOME under the data root")
    backfill = sub.add_parser(
        "backfill", help="submit an asset backfill (default: everything) for the daemon of `make dev` to run"
    )
    backfill.add_argument("--select", default="", help="comma-separated asset names (default: all)")
    backfill.add_argument("--partitions", default="", help="comma-separated partition keys (default: all)")
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
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        steps = run_demo(
            defs,
            instance,
            force=args.force,
            select=[s for s in args.select.split(",") if s] or None,
            run_tags={"hnr/profile": str(settings.profile_path), "hnr/data_dir": str(settings.data_dir)},
        )
    wall = time.perf_counter() - started
    ran = [s for s in steps if s.status == "materialized"]
    lines = [f"demo of profile {settings.profile!r}: {len(ran)} materialized, {len(steps) - len(ran)} up to date"]
    lines += [
        f"  {s.asset:<24} {s.partition or '-':<32} {s.status:<13} {s.seconds:8.1f} s"
        + (f"  peak RSS so far {s.peak_rss_mib:6.0f} MiB" if s.peak_rss_mib is not None else "")
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
    lines.append(f"open the UI with `make dev` (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
