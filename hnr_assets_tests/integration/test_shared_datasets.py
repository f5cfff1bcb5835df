"""Every collection in ../shared/datasets loads with the counts its README lists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hnr_assets.lib.data.beir import convert_beir_split
from hnr_assets.lib.runtime.errors import DataValidationError
from hnr_assets.lib.runtime.io import atomic_dir

pytestmark = pytest.mark.integration

# (documents, judged test queries, test judgements) from ../shared/datasets/README.md
EXPECTED = {
    "scifact": (5183, 300, 339),
    "nfcorpus_preprocessed": (3395, 323, 12334),
    "cranfield": (1400, 225, 1837),
    "cisi": (1460, 76, 3114),
    "med": (1033, 30, 696),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_collection_counts(shared_datasets: Path, tmp_path: Path, name: str) -> None:
    stats = convert_beir_split(shared_datasets / name, "test", tmp_path)
    assert (stats.documents, stats.queries, stats.judgements) == EXPECTED[name]


def test_scifact_train_split(shared_datasets: Path, tmp_path: Path) -> None:
    stats = convert_beir_split(shared_datasets / "scifact", "train", tmp_path)
    assert (stats.queries, stats.judgements) == (809, 919)


def test_truncated_line_100_names_file_and_line(shared_datasets: Path, tmp_path: Path) -> None:
    copy = tmp_path / "scifact"
    shutil.copytree(shared_datasets / "scifact", copy)
    corpus = copy / "corpus.jsonl"
    lines = corpus.read_bytes().splitlines(keepends=True)
    lines[99] = lines[99][:60] + b"\n"
    corpus.write_bytes(b"".join(lines))
    target = tmp_path / "out"
    with pytest.raises(DataValidationError) as err, atomic_dir(target) as tmp:
        convert_beir_split(copy, "test", tmp)
    assert err.value.path.name == "corpus.jsonl" and err.value.line == 100
    assert "corpus.jsonl:100: invalid JSON" in str(err.value)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scifact"]


def test_local_profile_asset_on_truncated_scifact(shared_datasets: Path, tmp_path: Path) -> None:
    """The same through the `datasets` asset of the `local` profile: the run fails, nothing is written."""
    import dagster as dg

    from hnr_assets.definitions import build_defs
    from hnr_assets.settings import Settings

    mirror = tmp_path / "mirror"
    shutil.copytree(shared_datasets / "scifact", mirror / "scifact")
    corpus = mirror / "scifact" / "corpus.jsonl"
    lines = corpus.read_bytes().splitlines(keepends=True)
    lines[99] = lines[99][:60] + b"\n"
    corpus.write_bytes(b"".join(lines))
    settings = Settings.from_env(
        {"HNR_PROFILE": "local", "HNR_DATA_DIR": str(tmp_path / "data"), "HNR_DATASETS_DIR": str(mirror)}
    )
    defs = build_defs(settings)
    result = dg.materialize(
        defs.assets,
        selection=["datasets"],
        partition_key="scifact",
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error.cause.cls_name == "DataValidationError"
    assert "corpus.jsonl:100: invalid JSON" in error.cause.message
    out = tmp_path / "data" / "local" / "datasets"
    assert not out.exists() or list(out.iterdir()) == []
