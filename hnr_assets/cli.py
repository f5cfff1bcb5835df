"""Command line: `python -m hnr_assets.cli demo` materializes every asset of the active profile.

The demo runs in-process against the persistent Dagster instance under the data root (the one
`make dev` opens), so every materialization, its metadata and its checks show up in the UI afterwards.
A partition whose latest materialization has the current code version and is newer than every
materialization of its parents is skipped, so an interrupted demo resumes where it stopped; `--force`
reruns everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hnr.demo")


@dataclass
class Step:
    asset: str
    partition: str | None
    status: str
    seconds: float


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
                steps.append(Step(name, partition, "up to date", 0.0))
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
                tags={"hnr/launched_by": "demo", **(run_tags or {})},
            )
            seconds = time.perf_counter() - started
            log.info("%s [%s]: done in %.1f s", name, partition or "-", seconds)
            steps.append(Step(name, partition, "materialized", seconds))
    return steps


def _peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def init_dagster_home(dagster_home: Path) -> Path:
    """Create DAGSTER_HOME with hnr's `dagster.yaml` unless one is there already."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(Path(__file__).with_name("dagster.yaml"), config)
    return dagster_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hnr_assets.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="materialize every asset of the active profile")
    demo.add_argument("--force", action="store_true", help="rerun partitions that are up to date")
    demo.add_argument("--select", default="", help="comma-separated asset names (default: all)")
    sub.add_parser("init", help="create DAGSTER_HOME under the data root")
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
    lines += [f"  {s.asset:<24} {s.partition or '-':<32} {s.status:<13} {s.seconds:8.1f} s" for s in steps]
    lines.append(f"wall time {wall:.1f} s, peak RSS {_peak_rss_mib():.0f} MiB; data root {settings.data_dir}")
    lines.append(f"open the UI with `make dev` (DAGSTER_HOME={os.environ['DAGSTER_HOME']})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
