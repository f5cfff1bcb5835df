"""A sharded, resumable store of generation results.

Work is written as numbered shards under `<root>/<signature>/shard-NNNNN/`, each a folder of Parquet
tables written to a temporary sibling and renamed into place (`io.atomic_dir`): a shard is either
complete or absent, whatever moment the process is killed at. The pairs a complete shard holds are
done; a rerun skips them. The signature is a hash of every setting that changes what is generated
(model, prompt text, sampling, seeds, validation), so work done under other settings is never mixed
in (it stays in its own folder until deleted). One process at a time holds the store's lock
(`fcntl.flock`, released by the kernel even on SIGKILL); a second one fails instead of duplicating work.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from hnr_assets.lib.runtime.errors import HnrError
from hnr_assets.lib.runtime.io import atomic_dir, write_text

_SHARD = re.compile(r"^shard-(\d{5,})$")
PAIR_KEY = ("query_id", "positive_id")


class ShardStoreError(HnrError):
    """The shard store is locked by another process or its contents are inconsistent."""


def signature_of(settings: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit hash of JSON-serialisable settings."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class ShardStore:
    """Numbered, atomically written shards of one generation configuration.

    Args:
        root: The folder that holds one sub-folder per signature.
        settings: What determines the output; hashed into the folder name and stored beside it.
        tables: Names of the tables each shard holds; `pairs` (with `query_id`, `positive_id`) is required.

    Use as a context manager: entering takes the lock.
    """

    def __init__(self, root: Path, settings: Mapping[str, Any], tables: tuple[str, ...]) -> None:
        if "pairs" not in tables:
            raise ValueError("a shard store needs a 'pairs' table")
        self.settings = dict(settings)
        self.signature = signature_of(self.settings)
        self.folder = Path(root) / self.signature
        self.tables = tables
        self._lock_fh = None

    # -------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> ShardStore:
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = (self.folder / ".lock").open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ShardStoreError(
                f"{self.folder} is being written by another process (lock held); wait for it or stop it"
            ) from None
        self._lock_fh = fh
        settings_file = self.folder / "settings.json"
        if not settings_file.exists():
            write_text(json.dumps(self.settings, indent=2, sort_keys=True, default=str), settings_file)
        for stale in self.folder.glob(".shard-*.tmp-*"):  # left by a process killed mid-write
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    # -------------------------------------------------------------------------------- reading

    def shard_dirs(self) -> list[Path]:
        """Complete shards, in order."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _SHARD.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def read(self, table: str, columns: list[str] | None = None) -> pl.DataFrame | None:
        """One table over all complete shards (None when there is no shard), optionally some columns only."""
        frames = [pl.read_parquet(d / f"{table}.parquet", columns=columns) for d in self.shard_dirs()]
        return pl.concat(frames, how="vertical") if frames else None

    def done_pairs(self) -> set[tuple[str, str]]:
        """(query_id, positive_id) of every pair in a complete shard.

        Raises:
            ShardStoreError: A pair is in two shards (never written by this store; a sign of a copied folder).
        """
        pairs = self.read("pairs")
        if pairs is None:
            return set()
        keys = list(pairs.select(*PAIR_KEY).iter_rows())
        done = set(keys)
        if len(done) != len(keys):
            raise ShardStoreError(f"{self.folder}: {len(keys) - len(done)} pairs appear in more than one shard")
        return done

    # -------------------------------------------------------------------------------- writing

    def write(self, tables: Mapping[str, pl.DataFrame]) -> Path:
        """Write the next shard atomically; returns its folder.

        Raises:
            ShardStoreError: The store is not locked by this process, or a table is missing.
        """
        if self._lock_fh is None:
            raise ShardStoreError("write a shard inside `with store:` (the lock guards against duplicates)")
        missing = sorted(set(self.tables) - set(tables))
        if missing:
            raise ShardStoreError(f"shard is missing tables {missing}")
        existing = self.shard_dirs()
        index = int(_SHARD.match(existing[-1].name).group(1)) + 1 if existing else 0
        target = self.folder / f"shard-{index:05d}"
        with atomic_dir(target) as tmp:
            for name in self.tables:
                tables[name].write_parquet(tmp / f"{name}.parquet", compression="zstd")
            for path in tmp.iterdir():  # data on disk before the rename makes the shard visible
                with path.open("rb") as fh:
                    os.fsync(fh.fileno())
        return target
