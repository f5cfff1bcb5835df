"""The mining stage materialized on a real (ephemeral) Dagster instance with the `test` profile."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from hnr_assets.definitions import build_defs
from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA
from hnr_assets.settings import Settings
from hnr_assets_tests.conftest import metadata
from hnr_assets_tests.fixtures import make_tiny_dataset

MINING = ["bm25_index", "bm25_negatives", "cross_encoder", "ce_negatives"]


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(c.asset_key.to_user_string(), c.check_name): c for c in result.get_asset_check_evaluations()}


def _mine(settings: Settings, selection: list[str] = MINING) -> dg.ExecuteInProcessResult:
    """training_pairs, then the unpartitioned mining assets, on one instance."""
    defs = build_defs(settings)
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize(defs.assets, selection=["training_pairs"], resources=defs.resources, instance=instance)
    assert first.success
    result = dg.materialize(defs.assets, selection=selection, resources=defs.resources, instance=instance)
    assert result.success
    return result


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory):
    """The test profile over a tiny mirror with 10 documents per topic (enough hits for 5 negatives)."""
    tmp_path = tmp_path_factory.mktemp("mined")
    mirror = tmp_path / "mirror10"
    make_tiny_dataset(mirror / "tiny-a", seed=1, docs_per_topic=10)
    make_tiny_dataset(mirror / "tiny-b", seed=2, prefix="b")
    settings = Settings.from_env(
        {"HNR_PROFILE": "test", "HNR_DATA_DIR": str(tmp_path / "data"), "HNR_DATASETS_DIR": str(mirror)}
    )
    return settings, _mine(settings)


def test_mining_assets_materialize_and_pass_their_checks(mined) -> None:
    settings, result = mined
    root = settings.data_dir / "test"
    checks = _checks(result)
    for asset in ("bm25_negatives", "ce_negatives"):
        for name in ("schema", "not_positive", "distinct", "full_coverage"):
            assert checks[(asset, name)].passed, (asset, name, checks[(asset, name)].metadata)
        negatives = pl.read_parquet(root / asset / "negatives.parquet")
        assert dict(negatives.schema) == NEGATIVES_SCHEMA
        assert negatives["source"].unique().to_list() == [asset.split("_")[0]]
        meta = metadata(result, asset)
        assert meta["pairs"] == 24 and meta["negatives"] == negatives.height == 24 * 5
        assert meta["pairs_short"] == 0 and meta["short_pairs"] == "none"
        assert "| query | positive | negative_rank |" in meta["sample"]
        assert meta["mlflow_run_id"]
    assert checks[("bm25_index", "contract")].passed
    assert metadata(result, "bm25_index")["documents"] == 80
    # the tiny random cross-encoder cannot pass the sanity check; it is a WARN there, never blocking
    sanity = checks[("cross_encoder", "sanity")]
    assert sanity.severity == dg.AssetCheckSeverity.WARN
    manifest = json.loads((root / "cross_encoder" / "hnr_cross_encoder.json").read_text())
    assert manifest["runtime"] == "torch" and manifest["source"]["kind"] == "tiny-random"


def test_no_negative_is_a_positive_of_its_query(mined) -> None:
    settings, _ = mined
    root = settings.data_dir / "test"
    qrels = pl.read_parquet(root / "training_pairs" / "qrels.parquet").filter(pl.col("grade") > 0)
    corpus = pl.read_parquet(root / "training_pairs" / "corpus.parquet")
    for asset in ("bm25_negatives", "ce_negatives"):
        negatives = pl.read_parquet(root / asset / "negatives.parquet")
        clash = negatives.join(
            qrels.select("query_id", pl.col("doc_id").alias("negative_id")), on=["query_id", "negative_id"]
        )
        assert clash.height == 0
    assert corpus.height == 80


def test_short_pairs_are_reported_and_warned(test_settings: Settings) -> None:
    """The default tiny corpus (6 documents per topic) leaves some queries with fewer than 5 usable hits."""
    result = _mine(test_settings, ["bm25_index", "bm25_negatives"])
    checks = _checks(result)
    coverage = checks[("bm25_negatives", "full_coverage")]
    assert not coverage.passed and coverage.severity == dg.AssetCheckSeverity.WARN
    assert checks[("bm25_negatives", "not_positive")].passed
    meta = metadata(result, "bm25_negatives")
    assert meta["pairs_short"] > 0
    assert "BM25 returned only" in meta["short_pairs"] or "positives by id" in meta["short_pairs"]
    stats = pl.read_parquet(test_settings.data_dir / "test" / "bm25_negatives" / "stats.parquet")
    assert stats.filter(pl.col("reason").is_not_null()).height == meta["pairs_short"]
    assert (stats.filter(pl.col("reason").is_null())["negatives"] == 5).all()


def test_bm25_scores_partition(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    instance = dg.DagsterInstance.ephemeral()
    dg.materialize(
        defs.assets, selection=["datasets"], partition_key="tiny-a", resources=defs.resources, instance=instance
    )
    result = dg.materialize(
        defs.assets, selection=["bm25_scores"], partition_key="tiny-a", resources=defs.resources, instance=instance
    )
    meta = metadata(result, "bm25_scores")
    folder = test_settings.data_dir / "test" / "bm25_scores" / "tiny-a"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 < metrics["ndcg@10"] <= 1.0 and meta["ndcg@10"] == pytest.approx(metrics["ndcg@10"], abs=1e-4)
    assert {"ndcg@10", "recall@100", "mrr@10"} <= set(meta)
    run = pl.read_parquet(folder / "run.parquet")
    assert run.columns == ["query_id", "doc_id", "score", "rank"]
    per_query = pl.read_parquet(folder / "per_query.parquet")
    assert per_query.columns == ["query_id", "ndcg@10", "recall@100", "mrr@10", "map@100"]
    assert per_query.height == metrics["queries"] == 8
    checks = _checks(result)
    assert checks[("bm25_scores", "contract")].passed
    # cached index: a second materialization reuses it
    cache = test_settings.data_dir / "cache" / "bm25-indexes"
    assert len(list(cache.iterdir())) == 1
    again = dg.materialize(
        defs.assets, selection=["bm25_scores"], partition_key="tiny-a", resources=defs.resources, instance=instance
    )
    assert metadata(again, "bm25_scores")["ndcg@10"] == meta["ndcg@10"]
