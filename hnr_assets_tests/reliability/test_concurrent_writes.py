"""Atomic writes under contention: several real processes write the same targets at once.

Before the temporary names carried their writer, a second writer's `remove_stale_tmp` deleted the first
writer's temporary folder in the middle of its write, and two folder swaps could meet between their
two renames (`ENOTEMPTY`). Here four processes each write the same folder and the same file 25 times
while a fifth process reads them: no writer fails, no reader ever sees a partial file, and nothing but
the finished target is left.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from hnr_assets.lib.runtime.io import atomic_dir, atomic_path, remove_stale_tmp

WRITERS = 4
ROUNDS = 25
PAYLOAD = 64 * 1024


def _content(writer: int, round_: int) -> bytes:
    head = f"writer {writer} round {round_}\n".encode()
    return head + b"x" * (PAYLOAD - len(head) - 4) + b"END\n"


def _complete(data: bytes) -> bool:
    return len(data) == PAYLOAD and data.endswith(b"END\n")


def _writer(root: str, writer: int, start: mp.Event, errors: mp.Queue) -> None:
    start.wait()
    folder, single = Path(root) / "folder", Path(root) / "single.bin"
    for round_ in range(ROUNDS):
        try:
            with atomic_dir(folder) as tmp:
                for name in ("a.bin", "b.bin"):
                    with (tmp / name).open("wb") as fh:  # written in pieces, as real writers do
                        data = _content(writer, round_)
                        for i in range(0, len(data), 4096):
                            fh.write(data[i : i + 4096])
            with atomic_path(single) as tmp:
                tmp.write_bytes(_content(writer, round_))
        except Exception as exc:  # reported to the parent, which fails the test
            errors.put(f"writer {writer} round {round_}: {type(exc).__name__}: {exc}")


def _reader(root: str, stop: mp.Event, report: mp.Queue) -> None:
    seen, partial = 0, []
    while not stop.is_set():
        for path in (Path(root) / "folder" / "a.bin", Path(root) / "folder" / "b.bin", Path(root) / "single.bin"):
            try:
                data = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                continue  # between the two renames of a folder swap: absent, never partial
            seen += 1
            if not _complete(data):
                partial.append(f"{path.name}: {len(data)} bytes")
    report.put((seen, partial))


def test_concurrent_writers_of_one_target_all_finish_and_readers_never_see_partial_files(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    start, stop = ctx.Event(), ctx.Event()
    errors, report = ctx.Queue(), ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(str(tmp_path), i, start, errors)) for i in range(WRITERS)]
    reader = ctx.Process(target=_reader, args=(str(tmp_path), stop, report))
    for proc in [*writers, reader]:
        proc.start()
    start.set()
    for proc in writers:
        proc.join(timeout=120)
    stop.set()
    seen, partial = report.get(timeout=30)
    reader.join(timeout=30)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert all(p.exitcode == 0 for p in writers)
    assert failures == []
    assert partial == [] and seen > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "single.bin"]  # no temporary left
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == ["a.bin", "b.bin"]
    assert _complete((tmp_path / "single.bin").read_bytes())


def test_a_live_writers_temporary_is_kept_and_a_dead_writers_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()

    def hold() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            ready.set()
            release.wait(60)
            tmp.write_bytes(b"whole")

    live = ctx.Process(target=hold)
    live.start()
    assert ready.wait(60)
    remove_stale_tmp(target)  # what any other writer of the target does first
    assert len(list(tmp_path.glob(".out.parquet.tmp-*"))) == 1  # the live writer's temporary survives
    release.set()
    live.join(30)
    assert live.exitcode == 0 and target.read_bytes() == b"whole"

    ready.clear()
    release.clear()
    dead = ctx.Process(target=hold)
    dead.start()
    assert ready.wait(60)
    os.kill(dead.pid, signal.SIGKILL)
    dead.join(30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{dead.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(tmp_path.glob(".out.parquet.tmp-*"))) == 1  # left by the killed writer
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]
    assert target.read_bytes() == b"next"
