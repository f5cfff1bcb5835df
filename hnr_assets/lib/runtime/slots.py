"""Host-wide slots: at most N holders at a time among the processes of one machine, by file locks.

`hold_slot(folder, name, slots)` takes one of the files `<folder>/<name>.<i>.lock` (i < slots) with an
exclusive `fcntl.flock` and keeps it until the block ends. The kernel releases a lock when its process
exits, SIGKILL included, so a crashed holder never leaves a slot taken. hnr puts its heavy Dagster steps
behind one (`hnr_assets/defs/execution.py`), because Dagster's SQLite storage can hand the single slot of
a pool to two steps that claim it in the same instant.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def hold_slot(
    folder: Path,
    name: str,
    slots: int,
    *,
    poll_seconds: float = 0.5,
    on_wait: Callable[[list[Path]], None] | None = None,
) -> Iterator[Path]:
    """Hold one of `slots` lock files named `name` in `folder` while the block runs.

    Args:
        folder: Where the lock files live (created if missing).
        name: The slot group's name (a file name part: letters, digits, `-`, `_`, `.`).
        slots: How many holders may run at once (≥ 1).
        poll_seconds: How often a waiting caller tries again.
        on_wait: Called once, with the lock files, when every slot is taken and the caller starts waiting.

    Yields:
        The lock file held.

    Raises:
        ValueError: `slots` < 1, or `name` is not a plain file name part.
    """
    if slots < 1:
        raise ValueError(f"slot group {name!r}: needs at least one slot, got {slots}")
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"slot group name {name!r}: use letters, digits, '-', '_' or '.' only")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{i}.lock" for i in range(slots)]
    waited = False
    while True:
        for path in paths:
            fh = path.open("a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield path
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        if not waited and on_wait is not None:
            on_wait(paths)
        waited = True
        time.sleep(poll_seconds)
