"""`benchmarks/scale.py` at its smallest size, end to end: a smoke test that asserts no timing.

Every stage runs in its own child process on the synthetic 10k-passage collection, in both variants
where a stage has a `before` (main's code) and an `after` (the package): both must finish, check clean,
and mine the same negatives from the same Lucene hits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]


def test_scale_benchmark_smallest_size(shared_datasets: Path, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {**os.environ, "HNR_DATASETS_DIR": str(shared_datasets)}
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "scale.py"),
            "--sizes",
            "10k",
            "--work",
            str(tmp_path),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    records = report["records"]
    stages = {r["stage"] for r in records}
    assert len(stages) == 12 and {r["variant"] for r in records} == {"before", "after"}
    failed = [(r["stage"], r["variant"], r.get("error")) for r in records if not r["ok"]]
    assert not failed
    for r in records:
        counts = r["counts"]
        assert r["steps"] and r["peak_mib"] > 0
        assert counts.get("problems", 0) == 0, (r["stage"], r["variant"], counts)
        for key in ("negatives", "pairs", "hits", "candidates", "run_rows", "rows"):
            assert counts.get(key, 1) > 0, (r["stage"], r["variant"], key)
    assert "## Growth exponents and paper scale" in run.stdout and "## Before / after, same run" in run.stdout
    scratch = tmp_path / "10k" / "scratch"
    for name in ("bm25_negatives-pyserini", "ce_negatives"):
        before = pl.read_parquet(scratch / f"{name}-before" / "negatives.parquet")
        after = pl.read_parquet(scratch / f"{name}-after" / "negatives.parquet")
        assert after.height and after.equals(before), name
        stats = [pl.read_parquet(scratch / f"{name}-{v}" / "stats.parquet") for v in ("before", "after")]
        assert stats[0].equals(stats[1]), name
