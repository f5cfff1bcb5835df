"""Host slots: real lock files, held by real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hnr_assets.lib.runtime.slots import hold_slot

HOLDER = """
import sys, time
from pathlib import Path
from hnr_assets.lib.runtime.slots import hold_slot

with hold_slot(Path(sys.argv[1]), "heavy", int(sys.argv[2])) as path:
    print(path.name, flush=True)
    time.sleep(600)
"""


def _holder(folder: Path, slots: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(slots)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_slot_taken_by_another_process_makes_the_caller_wait_until_it_exits(tmp_path: Path) -> None:
    proc, held = _holder(tmp_path, 1)
    assert held == "heavy.0.lock"
    waits: list[list[Path]] = []
    try:
        started = time.monotonic()
        killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1.5); os.kill({proc.pid}, 9)"])
        with hold_slot(tmp_path, "heavy", 1, poll_seconds=0.05, on_wait=waits.append) as path:
            waited = time.monotonic() - started
        killer.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert path == tmp_path / "heavy.0.lock"
    assert waited >= 1.0  # until the holder was killed: the kernel freed its lock
    assert waits == [[tmp_path / "heavy.0.lock"]]  # told once


def test_a_second_slot_lets_two_holders_run_at_once(tmp_path: Path) -> None:
    proc, held = _holder(tmp_path, 2)
    waits: list[list[Path]] = []
    try:
        with hold_slot(tmp_path, "heavy", 2, on_wait=waits.append) as path:
            pass
    finally:
        proc.kill()
        proc.wait()
    assert {held, path.name} == {"heavy.0.lock", "heavy.1.lock"}
    assert waits == []


def test_the_slot_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), hold_slot(tmp_path, "heavy", 1):
        raise RuntimeError("step failed")
    with hold_slot(tmp_path, "heavy", 1, on_wait=lambda paths: pytest.fail("slot still held")):
        pass


@pytest.mark.parametrize(("name", "slots"), [("heavy", 0), ("../x", 1), ("", 1), (".hidden", 1)])
def test_bad_slot_groups_are_refused(tmp_path: Path, name: str, slots: int) -> None:
    with pytest.raises(ValueError, match="slot"), hold_slot(tmp_path, name, slots):
        pass
