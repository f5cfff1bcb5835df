"""Atomic file and folder writes: a reader sees the old output or the new one, never a partial one.

Everything is first written to a hidden temporary sibling of its target (same file system), then
renamed into place with `os.replace`. A crash leaves at most a `.tmp-*` sibling behind, which the next
write of the same target removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from hnr_assets.lib.errors import ConfigError

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


def _tmp_sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}{_TMP_MARK}{uuid.uuid4().hex[:12]}")


def remove_stale_tmp(target: Path) -> None:
    """Remove temporary siblings a crashed write of `target` left behind."""
    if not target.parent.is_dir():
        return
    for stale in target.parent.glob(f".{target.name}{_TMP_MARK}*"):
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


def _replace_dir(tmp: Path, target: Path) -> None:
    """Swap a finished folder into place; the old one is moved aside, then deleted."""
    if target.exists():
        trash = _tmp_sibling(target)
        os.replace(target, trash)
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, target)


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
