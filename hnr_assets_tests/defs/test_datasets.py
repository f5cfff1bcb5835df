"""`datasets` and `training_pairs` materialized on a real (ephemeral) Dagster instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hnr_assets.cli import run_demo
from hnr_assets.definitions import build_defs
from hnr_assets.lib.data.beir import load_qrels
from hnr_assets.settings import Settings
from hnr_assets_tests.conftest import materialize, metadata
from hnr_assets_tests.fixtures import make_tiny_dataset


def test_definitions_have_the_stage_assets(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"datasets", "training_pairs"} <= keys
    pdef = defs.resolve_assets_def("datasets").partitions_def
    assert list(pdef.get_partition_keys()) == ["tiny-a", "tiny-b"]


def test_datasets_partition(test_settings: Settings, tiny_mirror: Path) -> None:
    defs = build_defs(test_settings)
    result = materialize(defs, "datasets", "tiny-b")
    assert result.success
    meta = metadata(result, "datasets")
    assert (meta["documents"], meta["queries"], meta["judgements"]) == (48, 8, 8)
    assert meta["source"].startswith("mirror: ")
    assert "| doc_id | title | text |" in meta["sample_documents"]
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "contract"
    out = test_settings.data_dir / "test" / "datasets" / "tiny-b"
    assert sorted(p.name for p in out.iterdir()) == [
        "corpus.parquet",
        "manifest.json",
        "qrels.parquet",
        "queries.parquet",
    ]
    assert len(load_qrels(out / "qrels.parquet")) == 8


def test_training_pairs(test_settings: Settings) -> None:
    defs = build_defs(test_settings)
    result = materialize(defs, "training_pairs")
    meta = metadata(result, "training_pairs")
    assert (meta["pairs"], meta["queries"], meta["corpus_documents"]) == (24, 16, 48)
    pairs = pl.read_parquet(test_settings.data_dir / "test" / "training_pairs" / "pairs.parquet")
    assert pairs.columns == ["query_id", "query", "positive_id", "positive"]
    assert pairs.filter(pl.col("query_id") == "q0-0").height == 2  # two positives, two rows
    assert all(result.get_asset_check_evaluations()[i].passed for i in range(1))


def test_max_pairs_subsample_is_seeded(tmp_path: Path, tiny_mirror: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        "name: sub\ndatasets:\n  - name: tiny-a\n"
        "training_pairs:\n  dataset: {name: tiny-a}\n  max_pairs: 5\n  seed: 3\n"
    )
    settings = Settings.from_env(
        {"HNR_PROFILE": str(profile), "HNR_DATA_DIR": str(tmp_path / "d"), "HNR_DATASETS_DIR": str(tiny_mirror)}
    )
    defs = build_defs(settings)
    first = materialize(defs, "training_pairs")
    pairs_path = tmp_path / "d" / "sub" / "training_pairs" / "pairs.parquet"
    one = pl.read_parquet(pairs_path)
    materialize(defs, "training_pairs")
    assert metadata(first, "training_pairs")["pairs"] == 5
    assert one.equals(pl.read_parquet(pairs_path))


def test_bad_input_fails_and_writes_nothing(test_settings: Settings, tiny_mirror: Path) -> None:
    corpus = tiny_mirror / "tiny-a" / "corpus.jsonl"
    lines = corpus.read_text().splitlines(keepends=True)
    lines[9] = lines[9][: len(lines[9]) // 2] + "\n"
    corpus.write_text("".join(lines))
    defs = build_defs(test_settings)
    with pytest.raises(Exception, match=r"corpus\.jsonl:10: invalid JSON"):
        materialize(defs, "datasets", "tiny-a")
    out_root = test_settings.data_dir / "test" / "datasets"
    assert not out_root.exists() or list(out_root.iterdir()) == []


def test_bad_input_keeps_the_previous_good_output(test_settings: Settings, tiny_mirror: Path) -> None:
    defs = build_defs(test_settings)
    materialize(defs, "datasets", "tiny-a")
    out = test_settings.data_dir / "test" / "datasets" / "tiny-a"
    before = (out / "qrels.parquet").read_bytes()
    qrels = tiny_mirror / "tiny-a" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "q0-2\tmissing-doc\t1\n")
    with pytest.raises(Exception, match="corpus-id 'missing-doc' is not in corpus.jsonl"):
        materialize(defs, "datasets", "tiny-a")
    assert (out / "qrels.parquet").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny-a"]


def test_demo_materializes_everything_then_skips(test_settings: Settings, tmp_path: Path) -> None:
    defs = build_defs(test_settings)
    instance = dg.DagsterInstance.ephemeral()
    steps = run_demo(defs, instance, select=["datasets", "training_pairs"])
    assert [(s.asset, s.partition, s.status) for s in steps] == [
        ("datasets", "tiny-a", "materialized"),
        ("datasets", "tiny-b", "materialized"),
        ("training_pairs", None, "materialized"),
    ]
    again = run_demo(defs, instance, select=["datasets", "training_pairs"])
    assert {s.status for s in again} == {"up to date"}
    forced = run_demo(defs, instance, force=True, select=["training_pairs"])
    assert [s.status for s in forced] == ["materialized"]


def test_definitions_load_without_heavy_imports(test_settings: Settings) -> None:
    import subprocess
    import sys

    code = (
        "import sys, hnr_assets.definitions; "
        "heavy = [m for m in ('torch', 'pyserini', 'vllm', 'transformers', 'sentence_transformers', 'jnius') if m in sys.modules]; "
        "print(heavy)"
    )
    env = {"HNR_PROFILE": "test", "HNR_DATA_DIR": str(test_settings.data_dir), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_fixture_counts_match(tmp_path: Path) -> None:
    counts = make_tiny_dataset(tmp_path / "x", seed=2, prefix="b")
    assert counts == {"documents": 48, "test_queries": 8, "test_judgements": 8, "train_pairs": 24, "train_queries": 16}


def test_demo_reruns_when_the_data_root_changes(test_settings: Settings, tmp_path: Path) -> None:
    """A materialization recorded for another profile or data root does not count as up to date."""
    instance = dg.DagsterInstance.ephemeral()
    tags = {"hnr/profile": str(test_settings.profile_path), "hnr/data_dir": str(test_settings.data_dir)}
    defs = build_defs(test_settings)
    first = run_demo(defs, instance, select=["training_pairs"], run_tags=tags)
    assert [s.status for s in first] == ["materialized"]
    assert [s.status for s in run_demo(defs, instance, select=["training_pairs"], run_tags=tags)] == ["up to date"]
    other = {**tags, "hnr/data_dir": str(tmp_path / "elsewhere")}
    assert [s.status for s in run_demo(defs, instance, select=["training_pairs"], run_tags=other)] == ["materialized"]
