"""Assets `datasets` (one partition per evaluation dataset) and `training_pairs`."""

import json
import time
from pathlib import Path

import dagster as dg
import polars as pl

from hnr_assets.defs.checks import contract, problems_result
from hnr_assets.defs.execution import each_partition, hnr_asset
from hnr_assets.defs.layout import MANIFEST, PARQUET, Layout
from hnr_assets.lib.data.beir import SplitStats, convert_beir_split, dataset_files, validate_stored_split
from hnr_assets.lib.data.pairs import build_pairs, validate_pairs
from hnr_assets.lib.data.sources import ResolvedSource
from hnr_assets.lib.runtime.io import atomic_dir, file_sha256
from hnr_assets.lib.runtime.report import md_table
from hnr_assets.profiles.schema import Profile
from hnr_assets.resources.datasets import DatasetSourcesResource
from hnr_assets.resources.storage import StorageResource

SAMPLE_ROWS = 3


def _manifest(source: ResolvedSource, split: str, stats: dict) -> str:
    files = dataset_files(source.folder, split)
    return json.dumps(
        {
            "source": {"kind": source.kind, "detail": source.detail},
            "split": split,
            "counts": stats,
            "source_files": {
                name: {"path": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
                for name, path in files.items()
            },
        },
        indent=2,
    )


def _sample(frame: pl.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(md_table(frame.iter_rows(), frame.columns))


def _samples(folder: Path) -> dict[str, dg.MetadataValue]:
    return {
        f"sample_{label}": _sample(pl.read_parquet(folder / PARQUET[table], n_rows=SAMPLE_ROWS))
        for label, table in (("documents", "corpus"), ("queries", "queries"), ("qrels", "qrels"))
    }


def _source_metadata(source: ResolvedSource, target: Path, started: float) -> dict[str, object]:
    return {
        "source": f"{source.kind}: {source.detail}",
        "path": dg.MetadataValue.path(str(target)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _split_counts(stats: SplitStats) -> dict[str, int]:
    return {
        "documents": stats.documents,
        "empty_documents": stats.empty_documents,
        "queries": stats.queries,
        "judgements": stats.judgements,
        "relevant_judgements": stats.relevant_judgements,
    }


def datasets_asset(profile: Profile) -> dg.AssetsDefinition:
    """`datasets`, partitioned by evaluation dataset."""

    @hnr_asset(
        "datasets",
        profile,
        kinds={"parquet"},
        checks=[contract("Stored corpus, queries and qrels honour the BEIR contract.")],
        description=(
            "The evaluation split of one BEIR-layout dataset (partition = dataset name), validated and "
            "stored as corpus.parquet, queries.parquet (judged queries only) and qrels.parquet."
        ),
    )
    def datasets(
        context: dg.AssetExecutionContext, storage: StorageResource, dataset_sources: DatasetSourcesResource
    ) -> dg.MaterializeResult:
        return each_partition(context, lambda key: one_dataset(profile, context, key, storage, dataset_sources))

    return datasets


def one_dataset(
    profile: Profile, context, key: str, storage: StorageResource, dataset_sources: DatasetSourcesResource
) -> dg.MaterializeResult:
    """Convert and validate one evaluation dataset."""
    spec = profile.dataset(key)
    started = time.perf_counter()
    source = dataset_sources.resolve(spec)
    context.log.info(f"{spec.name}: reading split {spec.split!r} from {source.kind} {source.detail}")
    target = Layout(storage).folder("datasets", spec.name)
    with atomic_dir(target) as tmp:
        counts = _split_counts(convert_beir_split(source.folder, spec.split, tmp))
        (tmp / MANIFEST).write_text(_manifest(source, spec.split, counts), encoding="utf-8")
    problems = validate_stored_split(target)
    return dg.MaterializeResult(
        metadata={**counts, "split": spec.split, **_source_metadata(source, target, started), **_samples(target)},
        check_results=[problems_result("contract", problems)],
    )


def training_pairs_asset(profile: Profile) -> dg.AssetsDefinition:
    """`training_pairs`: the (query, positive) pairs and the training corpus the miners search."""
    pairs_spec = profile.training_pairs

    @hnr_asset(
        "training_pairs",
        profile,
        kinds={"parquet"},
        checks=[contract("Pairs are unique, non-empty, positives in the corpus.")],
        description=(
            "(query, positive passage) training pairs from a judged split, with that dataset's corpus "
            "(the training corpus that BM25 and the cross-encoder mine). Files: pairs.parquet "
            "(query_id, query, positive_id, positive), corpus.parquet, queries.parquet, qrels.parquet."
        ),
    )
    def training_pairs(
        context: dg.AssetExecutionContext, storage: StorageResource, dataset_sources: DatasetSourcesResource
    ) -> dg.MaterializeResult:
        started = time.perf_counter()
        source = dataset_sources.resolve(pairs_spec.dataset)
        context.log.info(
            f"training pairs: split {pairs_spec.split!r} of {pairs_spec.dataset.name} "
            f"from {source.kind} {source.detail}"
        )
        target = Layout(storage).folder("training_pairs")
        with atomic_dir(target) as tmp:
            stats = convert_beir_split(source.folder, pairs_spec.split, tmp)
            pairs, dropped_empty = build_pairs(
                *(pl.read_parquet(tmp / PARQUET[t]) for t in ("queries", "qrels", "corpus")),
                max_pairs=pairs_spec.max_pairs,
                seed=pairs_spec.seed,
            )
            pairs.write_parquet(tmp / PARQUET["pairs"], compression="zstd")
            counts = {
                "pairs": pairs.height,
                "queries": pairs["query_id"].n_unique(),
                "corpus_documents": stats.documents,
                "judgements_in_split": stats.judgements,
                "dropped_empty_positive": dropped_empty,
            }
            (tmp / MANIFEST).write_text(_manifest(source, pairs_spec.split, counts), encoding="utf-8")
        corpus_ids = pl.read_parquet(target / PARQUET["corpus"], columns=["doc_id"])["doc_id"]
        problems = validate_pairs(pl.read_parquet(target / PARQUET["pairs"]), corpus_ids)
        return dg.MaterializeResult(
            metadata={
                **counts,
                "dataset": pairs_spec.dataset.name,
                "split": pairs_spec.split,
                "max_pairs": pairs_spec.max_pairs if pairs_spec.max_pairs is not None else "all",
                **_source_metadata(source, target, started),
                "sample_pairs": _sample(pairs.head(SAMPLE_ROWS)),
            },
            check_results=[problems_result("contract", problems)],
        )

    return training_pairs


def build_defs(profile: Profile) -> dg.Definitions:
    """The dataset stage of `profile`."""
    return dg.Definitions(assets=[datasets_asset(profile), training_pairs_asset(profile)])
