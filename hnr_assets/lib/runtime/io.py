"""Atomic file and folder writes: a reader sees the old output or the new one, never a partial one.

Everything is first written to a hidden temporary sibling of its target (same file system), then
renamed into place with `os.replace`. A crash leaves at most a `.tmp-*` sibling behind, which the next
write of the same target removes. A temporary name carries its writer (host, process id and process
start time), so a write never removes the temporary of a writer that is still running: two processes
may write the same target at once (the same partition launched twice, one cache entry wanted by two
runs); both finish, and the last rename wins.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.owner import HOST, Owner, process_start

_TMP_MARK = ".tmp-"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]{0,127}$")


def check_safe_name(name: str, what: str) -> str:
    """Validate a name that becomes one path component (dataset, generator, recipe, partition key).

    Args:
        name: The candidate name.
        what: What the name is, for the error message (e.g. "dataset name").

    Returns:
        The name, unchanged.

    Raises:
        ConfigError: The name is empty, too long, starts with a dot or a dash, contains `..`, a path
            separator, or a character outside `A-Z a-z 0-9 _ . + = -`.
    """
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-128 characters from A-Z a-z 0-9 _ . + = -, "
            "starting with a letter or digit, without '..'"
        )
    return name


def safe_join(root: Path, *parts: str) -> Path:
    """Join validated name components under `root`; the result never escapes `root`."""
    path = root
    for part in parts:
        path = path / check_safe_name(part, "path component")
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise ConfigError(f"path {path} escapes {resolved_root}")
    return path


_HOST = hashlib.blake2b(HOST.encode(), digest_size=4).hexdigest()
# `.tmp-<host>-<pid>-<process start>-<random>`: who is writing, so that live writers are left alone.
_OWNER = re.compile(r"\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{12}$")
# A temporary of another host cannot be checked for a live owner; it is removed once this old.
FOREIGN_TMP_MAX_AGE_SECONDS = 24 * 3600


def _tmp_sibling(target: Path) -> Path:
    pid = os.getpid()
    owner = f"{_HOST}-{pid}-{process_start(pid) or 0}"
    return target.with_name(f".{target.name}{_TMP_MARK}{owner}-{uuid.uuid4().hex[:12]}")


def _owner_alive(tmp: Path) -> bool:
    """Whether the process that created a temporary sibling may still be writing it."""
    match = _OWNER.search(tmp.name)
    if match is None:
        return False  # not named by this module's writers (an older layout): nobody owns it
    if match["host"] != _HOST:
        try:
            return time.time() - tmp.stat().st_mtime < FOREIGN_TMP_MAX_AGE_SECONDS
        except OSError:
            return False
    # Same pid, other start time: the pid was reused, the writer is gone. Start 0: not recorded.
    return Owner(HOST, int(match["pid"]), int(match["start"]) or None).alive()


def remove_stale_tmp(target: Path) -> None:
    """Remove temporary siblings that crashed writes of `target` left behind (never a live writer's)."""
    if not target.parent.is_dir():
        return
    for stale in target.parent.glob(f".{target.name}{_TMP_MARK}*"):
        if _owner_alive(stale):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it onto `target`, on error delete it.

    Works for a file or a folder written at the yielded path. An existing target is replaced.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(target)
    tmp = _tmp_sibling(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {target}")
        if tmp.is_dir():
            _replace_dir(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _replace_dir(tmp: Path, target: Path, attempts: int = 100) -> None:
    """Swap a finished folder into place; the old one is moved aside, then deleted.

    Another process may swap its own folder in at the same moment: when the target reappears between
    the two renames (`ENOTEMPTY`) or vanishes before the first (`ENOENT`), the swap is retried, so
    both writers finish and the last one wins.
    """
    for _ in range(attempts):
        trash = None
        if target.exists():
            trash = _tmp_sibling(target)
            try:
                os.replace(target, trash)
            except FileNotFoundError:  # another writer moved it aside first
                trash = None
        try:
            os.replace(tmp, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue  # another writer's folder arrived in between: move it aside too
        finally:
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        return
    raise OSError(errno.EBUSY, f"could not swap {tmp} into {target}: other writers kept replacing it")


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces `target` as a whole on success."""
    with atomic_path(target) as tmp:
        tmp.mkdir()
        yield tmp


def write_parquet(df: pl.DataFrame, target: Path) -> Path:
    """Write a DataFrame to Parquet atomically (zstd)."""
    with atomic_path(target) as tmp:
        df.write_parquet(tmp, compression="zstd")
    return target


def write_text(text: str, target: Path) -> Path:
    """Write a UTF-8 text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def frame_fingerprint(df: pl.DataFrame) -> str:
    """A content hash of a DataFrame (column names, row order and values).

    Independent of the Parquet writer and of the polars version: each value is hashed through its
    `repr`, so the same rows give the same hash on any machine.
    """
    digest = hashlib.sha256("\x1f".join(df.columns).encode())
    for row in df.iter_rows():
        digest.update("\x1e".join(map(repr, row)).encode("utf-8", "surrogatepass"))
        digest.update(b"\x1d")
    return digest.hexdigest()[:16]
