"""A disk that fills up in the middle of a materialization: a clear failure, nothing partial, a whole rerun.

Each case runs one asset in a child process whose data root is a real, small file system: a tmpfs
mounted in a private mount namespace (`unshare --map-root-user --mount`, no privileges needed), filled
with a copy of the seeded root, then shrunk (`remount,size=`) so that only part of the asset's output
fits. The kernel then answers the asset's writes with ENOSPC, as a full disk does. When the child has
ended, the tmpfs's content is copied back to the same path outside the namespace, and:

- the materialization failed, and the error the user sees says "No space left on device" (or, when the
  MLflow store under the data root was the write that failed, SQLite's "database or disk is full");
- a reader sees no partial file: every visible Parquet/JSON file parses, the asset's final files do not
  exist, and no temporary sibling is left behind (the writer removed its own on the error);
- the rerun on a disk with room succeeds and equals the uninterrupted run of the seed (content hashes),
  and MLflow keeps no RUNNING run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hnr_assets_tests.reliability.conftest import Seeded, materialize
from hnr_assets_tests.reliability.harness import (
    MATERIALIZE,
    PAUSE_PRELUDE,
    PROFILE,
    REPO,
    copy_root,
    tmp_leftovers,
    unreadable,
)
from hnr_assets_tests.reliability.test_crash_resume import CASES, Case, build_mlflow

# Mount a tmpfs at $DATA, fill it from $SEED, shrink it to what is used plus $FREE bytes, run the child,
# copy what it left to $OUT (the mount and its content vanish with the namespace).
SMALL_DISK = r"""
set -u
mount -t tmpfs -o size=1g,mode=0755 hnr-full-disk "$DATA" || exit 90
cp -a "$SEED"/. "$DATA"/ || exit 91
used=$(df --output=used -B1 "$DATA" | tail -n 1)
mount -o remount,size=$(( (used + FREE + 4095) / 4096 * 4096 )) "$DATA" || exit 92
echo "small disk: $(df --output=used,avail -B1 "$DATA" | tail -n 1) bytes used, available" >&2
"$PY" -c "$CODE" "$STEPS"
rc=$?
echo "small disk after: $(df --output=used,avail -B1 "$DATA" | tail -n 1)" >&2
cp -a "$DATA"/. "$OUT"/
exit $rc
"""


def _du(folder: Path) -> int:
    """Bytes a folder takes on a tmpfs (whole pages per file)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k t /mnt 2>/dev/null || exit 9",
        ],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


FULL_DISK_CASES = {"bm25_negatives": 0.5, "llm_negatives": 0.5, "encoders": 0.3, "scores-embedding-cache": 0.5}


def _params() -> list:
    by_id = {c.id: c for c in CASES}
    return [pytest.param(by_id[i], share, id=i, marks=[pytest.mark.slow]) for i, share in FULL_DISK_CASES.items()]


@pytest.mark.parametrize(("case", "share"), _params())
def test_disk_full_mid_materialization_then_rerun(case: Case, share: float, seeded: Seeded, tmp_path: Path) -> None:
    if not _can_unshare():
        pytest.fail("a private mount namespace is needed (`unshare --map-root-user --mount` from util-linux)")
    seed = copy_root(seeded.data_dir, tmp_path / "seed", drop=(f"{PROFILE}/{case.output}", *case.drop))
    data_dir, out = tmp_path / "data", tmp_path / "out"
    data_dir.mkdir()
    out.mkdir()
    reference = seeded.root / case.output
    if case.id == "scores-embedding-cache":
        reference = seeded.data_dir / "cache" / "embeddings"  # the big write of a scores partition
    free = int(_du(reference) * share)
    partition = str(case.partition) if case.partition else None
    env = {
        **seeded.env(data_dir),
        "DATA": str(data_dir),
        "SEED": str(seed),
        "OUT": str(out),
        "FREE": str(free),
        "PY": sys.executable,
        "CODE": PAUSE_PRELUDE + MATERIALIZE,
        "STEPS": json.dumps([(case.asset, partition)]),
    }
    child = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "bash", "-c", SMALL_DISK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = child.stdout + child.stderr
    assert child.returncode == 3, output[-4000:]  # MATERIALIZE exits 3 when the materialization failed
    # ENOSPC from a file write, or SQLite's word for it (the MLflow store shares the data root)
    assert "No space left on device" in output or "database or disk is full" in output, output[-4000:]

    data_dir.rmdir()
    out.rename(data_dir)  # the same absolute paths as inside the namespace
    target = data_dir / PROFILE / case.output
    assert not any((target / name).exists() for name in case.finals)
    assert unreadable(data_dir) == []
    assert tmp_leftovers(data_dir) == []

    result = materialize(seeded.settings(data_dir), case.asset, case.partition)
    assert result.success
    assert tmp_leftovers(data_dir) == [] and unreadable(data_dir) == []
    assert case.content(target) == case.content(seeded.root / case.output)
    if case.asset in ("encoders", "scores"):
        assert [r.info.run_id for r in build_mlflow(seeded, data_dir).find_runs({}, status="RUNNING")] == []
