"""`python -m hnr_assets.cli rates` and the table after the demo: probes read back from materializations."""

from __future__ import annotations

import dagster as dg

from hnr_assets.cli import Step, probe_rows, rates_report
from hnr_assets.definitions import build_defs
from hnr_assets.defs.rates import probes_metadata
from hnr_assets.lib.runtime.rates import RateProbe
from hnr_assets.settings import Settings

CE = RateProbe("ce_scoring", "pairs/s", "hnr onnx scorer", 25.0, "CrossEncoder fp32", 12.5, 64)
SEARCH = RateProbe("search", "queries/s", "hnr exact_search", 900.0, "beir", None, 100, skipped="beir is missing")


def test_the_table_lists_the_probes_of_the_latest_materializations(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("ce_negatives", metadata=probes_metadata([CE])))
    key = "bm25|tiny-a" if "bm25|tiny-a" in _score_keys(defs) else "tiny-a|bm25"
    scores = dg.AssetMaterialization("scores", partition=key, metadata=probes_metadata([SEARCH]))
    instance.report_runless_asset_event(scores)
    rows = probe_rows(defs, instance)
    assert [(stage, partition) for stage, partition, _ in rows] == [
        ("ce_negatives ce_scoring", None),
        ("scores search", key),
    ]
    lines = rates_report(defs, instance)
    assert lines[0].startswith("rate probes (hnr against its baseline")
    assert "| ce_negatives ce_scoring | - | 25.00 pairs/s | CrossEncoder fp32 | 12.50 | 2.00x |" in lines[1]
    assert "| - | beir is missing |" in lines[1]
    # After a demo: only the steps it materialized.
    steps = [Step("ce_negatives", None, "materialized", 1.0), Step("scores", key, "up to date", 0.0)]
    assert [r[0] for r in probe_rows(defs, instance, steps)] == ["ce_negatives ce_scoring"]


def test_no_probe_recorded_says_how_to_turn_them_on(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    instance = dg.DagsterInstance.ephemeral()
    assert "runtime.rate_probes.enabled" in rates_report(defs, instance)[0]
    assert rates_report(defs, instance, []) == []


def _score_keys(defs: dg.Definitions) -> list[str]:
    return [str(k) for k in defs.resolve_asset_graph().get(dg.AssetKey("scores")).partitions_def.get_partition_keys()]
