"""Atomic writes and safe names."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.io import (
    atomic_dir,
    atomic_path,
    check_safe_name,
    frame_fingerprint,
    safe_join,
    write_parquet,
)


def test_atomic_dir_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_write_leaves_old_output_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_path(tmp_path / "f.parquet") as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("bad input")
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_from_a_crash_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".f.parquet.tmp-deadbeef"
    stale.write_bytes(b"left by a killed process")
    write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "f.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet"]


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "a/b", "", ".hidden", "-flag", "a b", "x|y", "a,b", "é", "a" * 129, "a..b"]
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid dataset name"):
        check_safe_name(name, "dataset name")


@pytest.mark.parametrize("name", ["scifact", "trec-covid", "llm_qwen3-4b+bm25", "nfcorpus_preprocessed", "v1.2"])
def test_safe_names_pass(name: str) -> None:
    assert check_safe_name(name, "x") == name


def test_safe_join_stays_under_root(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a", "b") == tmp_path / "a" / "b"
    with pytest.raises(ConfigError):
        safe_join(tmp_path, "..")


def test_frame_fingerprint_is_content_based() -> None:
    a = pl.DataFrame({"q": ["x", "y"], "n": [1, 2]})
    assert frame_fingerprint(a) == frame_fingerprint(a.clone())
    assert frame_fingerprint(a) != frame_fingerprint(a.reverse())
    assert frame_fingerprint(a) != frame_fingerprint(a.with_columns(pl.lit(3).alias("n")))
