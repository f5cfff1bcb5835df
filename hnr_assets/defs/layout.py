"""Where every asset keeps its files, named once: the asset that writes a file and the assets that read it
both ask here.

Outputs live under `<data root>/<profile>/<asset>/<partition...>/` (`StorageResource.asset_dir`). A
reader gets an `Input` (the path and the asset partition that writes it); `Input.require` raises one
error type, `MissingInputError`, naming the asset to materialize when the file is not there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hnr_assets.lib.runtime.errors import ConfigError, MissingInputError
from hnr_assets.resources.storage import StorageResource

# File names, by the asset that writes them.
PARQUET = {name: f"{name}.parquet" for name in ("corpus", "queries", "qrels", "pairs")}
MANIFEST = "manifest.json"
NEGATIVES = "negatives.parquet"  # every negative set: bm25_negatives, ce_negatives, llm_negatives[g]
STATS = "stats.parquet"
RETRIEVAL_RANKS = "retrieval_ranks.parquet"
GENERATOR_MODEL = "model.json"  # generator_models[g]: where the weights are
SUMMARY = "summary.json"
CE_SCORES = "scores.parquet"  # llm_negatives_ce_scores[g]
TRAINING_SET = "training_set.parquet"
SPLIT = "split.parquet"
MODEL = "model"  # base_encoder/model/, encoders/<recipe>/model/
BASE_ENCODER = "base_encoder.json"
TRAINING = "training.json"
HISTORY = "history.json"


def producer(asset: str, *partition: str) -> str:
    """How a message names the asset (partition) to materialize: `` `base_encoder` ``, `the `encoders` partition ce`."""
    return f"the `{asset}` partition {'|'.join(partition)}" if partition else f"`{asset}`"


@dataclass(frozen=True)
class Input:
    """A file (or folder) one asset partition writes and another reads."""

    path: Path
    asset: str
    partition: tuple[str, ...] = ()

    def require(self, where: str = "", message: str = "") -> Path:
        """The path, when it exists.

        Args:
            where: The reader (`encoders[bm25]`), put before the message.
            message: A message of the reader's own (with advice of its own) instead of the default one.

        Raises:
            MissingInputError: It does not exist; the message names what to materialize.
        """
        if self.path.exists():
            return self.path
        text = message or f"{self.path} is missing: materialize {producer(self.asset, *self.partition)} first"
        raise MissingInputError(self.path, f"{where}: {text}" if where else text)


def negative_set(source: str) -> tuple[str, tuple[str, ...]]:
    """The asset (and partition) that writes the negative set `bm25`, `ce` or `llm-<generator>`."""
    if source in ("bm25", "ce"):
        return f"{source}_negatives", ()
    if source.startswith("llm-"):
        return "llm_negatives", (source.removeprefix("llm-"),)
    raise ConfigError(f"unknown negative set {source!r}")


class Layout:
    """The files of every asset under one storage root."""

    def __init__(self, storage: StorageResource) -> None:
        self.storage = storage

    def folder(self, asset: str, *partition: str) -> Path:
        """The folder an asset (partition) writes, replaced atomically as a whole."""
        return self.storage.asset_dir(asset, *partition)

    def mining_shards(self, asset: str) -> Path:
        """`mining_shards/<asset>/`: the resumable blocks of `bm25_negatives` or `ce_negatives` while they run."""
        return self.storage.asset_dir("mining_shards", asset)

    def input(self, asset: str, *partition: str, name: str = "") -> Input:
        """A file (`name`) or the folder of an asset partition, as something to read."""
        folder = self.folder(asset, *partition)
        return Input(folder / name if name else folder, asset, partition)

    def training_pairs(self, table: str) -> Input:
        """`training_pairs/<table>.parquet`: pairs, corpus, queries or qrels."""
        return self.input("training_pairs", name=PARQUET[table])

    def dataset(self, dataset: str, table: str) -> Input:
        """`datasets/<dataset>/<table>.parquet`: corpus, queries or qrels."""
        return self.input("datasets", dataset, name=PARQUET[table])

    def negatives(self, source: str) -> Input:
        """The `negatives.parquet` of a negative set (`bm25`, `ce`, `llm-<generator>`)."""
        asset, partition = negative_set(source)
        return self.input(asset, *partition, name=NEGATIVES)

    def generator_model(self, generator: str) -> Input:
        """`generator_models/<generator>/model.json`."""
        return self.input("generator_models", generator, name=GENERATOR_MODEL)

    def ce_scores(self, generator: str, name: str = CE_SCORES) -> Input:
        """`llm_negatives_ce_scores/<generator>/scores.parquet` (or its `manifest.json`)."""
        return self.input("llm_negatives_ce_scores", generator, name=name)

    def training_set(self, recipe: str, name: str = TRAINING_SET) -> Input:
        """`training_sets/<recipe>/training_set.parquet` (or `split.parquet`, `manifest.json`)."""
        return self.input("training_sets", recipe, name=name)

    def base_encoder(self, name: str = MODEL) -> Input:
        """`base_encoder/model/` (or `base_encoder.json`)."""
        return self.input("base_encoder", name=name)

    def encoder(self, recipe: str, name: str = MODEL) -> Input:
        """`encoders/<recipe>/model/` (or `training.json`, `history.json`)."""
        return self.input("encoders", recipe, name=name)
