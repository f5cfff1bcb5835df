"""Assets `datasets` (one partition per evaluation dataset) and `training_pairs`."""

import json
import time

import dagster as dg
import polars as pl

from hnr_assets.defs import versions
from hnr_assets.defs.checks import contract_spec, problems_result
from hnr_assets.defs.execution import each_partition, run_policy
from hnr_assets.defs.partitions import dataset_partitions
from hnr_assets.lib.beir import convert_beir_split, dataset_files, validate_stored_split
from hnr_assets.lib.io import atomic_dir, file_sha256
from hnr_assets.lib.pairs import build_pairs, validate_pairs
from hnr_assets.lib.report import md_table
from hnr_assets.lib.sources import ResolvedSource
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


def _samples(folder) -> dict[str, dg.MetadataValue]:
    corpus = pl.read_parquet(folder / "corpus.parquet", n_rows=SAMPLE_ROWS)
    queries = pl.read_parquet(folder / "queries.parquet", n_rows=SAMPLE_ROWS)
    qrels = pl.read_parquet(folder / "qrels.parquet", n_rows=SAMPLE_ROWS)
    return {
        "sample_documents": dg.MetadataValue.md(md_table(corpus.iter_rows(), corpus.columns)),
        "sample_queries": dg.MetadataValue.md(md_table(queries.iter_rows(), queries.columns)),
        "sample_qrels": dg.MetadataValue.md(md_table(qrels.iter_rows(), qrels.columns)),
    }


def build_defs(profile: Profile) -> dg.Definitions:
    """The dataset stage of `profile`."""

    @dg.asset(
        name="datasets",
        group_name="datasets",
        partitions_def=dataset_partitions(profile),
        kinds={"parquet"},
        code_version=versions.code_version(profile, "datasets"),
        check_specs=[
            contract_spec("datasets", description="Stored corpus, queries and qrels honour the BEIR contract.")
        ],
        **run_policy("datasets"),
        description=(
            "The evaluation split of one BEIR-layout dataset (partition = dataset name), validated and "
            "stored as corpus.parquet, queries.parquet (judged queries only) and qrels.parquet."
        ),
    )
    def datasets(
        context: dg.AssetExecutionContext, storage: StorageResource, dataset_sources: DatasetSourcesResource
    ) -> dg.MaterializeResult:
        return each_partition(context, lambda key: one_dataset(context, key, storage, dataset_sources))

    def one_dataset(context, key: str, storage: StorageResource, dataset_sources: DatasetSourcesResource):
        spec = profile.dataset(key)
        started = time.perf_counter()
        source = dataset_sources.resolve(spec)
        context.log.info(f"{spec.name}: reading split {spec.split!r} from {source.kind} {source.detail}")
        target = storage.asset_dir("datasets", spec.name)
        with atomic_dir(target) as tmp:
            stats = convert_beir_split(source.folder, spec.split, tmp)
            counts = {
                "documents": stats.documents,
                "empty_documents": stats.empty_documents,
                "queries": stats.queries,
                "judgements": stats.judgements,
                "relevant_judgements": stats.relevant_judgements,
            }
            (tmp / "manifest.json").write_text(_manifest(source, spec.split, counts), encoding="utf-8")
        problems = validate_stored_split(target)
        return dg.MaterializeResult(
            metadata={
                **counts,
                "split": spec.split,
                "source": f"{source.kind}: {source.detail}",
                "path": dg.MetadataValue.path(str(target)),
                "seconds": round(time.perf_counter() - started, 2),
                versions.METADATA_KEY: versions.settings_hash(profile, "datasets", key),
                **_samples(target),
            },
            check_results=[problems_result("contract", problems)],
        )

    pairs_spec = profile.training_pairs

    @dg.asset(
        name="training_pairs",
        group_name="datasets",
        kinds={"parquet"},
        code_version=versions.code_version(profile, "training_pairs"),
        check_specs=[
            contract_spec("training_pairs", description="Pairs are unique, non-empty, positives in the corpus.")
        ],
        **run_policy("training_pairs"),
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
        target = storage.asset_dir("training_pairs")
        with atomic_dir(target) as tmp:
            stats = convert_beir_split(source.folder, pairs_spec.split, tmp)
            pairs, dropped_empty = build_pairs(
                pl.read_parquet(tmp / "queries.parquet"),
                pl.read_parquet(tmp / "qrels.parquet"),
                pl.read_parquet(tmp / "corpus.parquet"),
                max_pairs=pairs_spec.max_pairs,
                seed=pairs_spec.seed,
            )
            pairs.write_parquet(tmp / "pairs.parquet", compression="zstd")
            counts = {
                "pairs": pairs.height,
                "queries": pairs["query_id"].n_unique(),
                "corpus_documents": stats.documents,
                "judgements_in_split": stats.judgements,
                "dropped_empty_positive": dropped_empty,
            }
            (tmp / "manifest.json").write_text(_manifest(source, pairs_spec.split, counts), encoding="utf-8")
        corpus_ids = pl.read_parquet(target / "corpus.parquet", columns=["doc_id"])["doc_id"]
        problems = validate_pairs(pl.read_parquet(target / "pairs.parquet"), corpus_ids)
        sample = pairs.head(SAMPLE_ROWS)
        return dg.MaterializeResult(
            metadata={
                **counts,
                "dataset": pairs_spec.dataset.name,
                "split": pairs_spec.split,
                "max_pairs": pairs_spec.max_pairs if pairs_spec.max_pairs is not None else "all",
                "source": f"{source.kind}: {source.detail}",
                "path": dg.MetadataValue.path(str(target)),
                "seconds": round(time.perf_counter() - started, 2),
                versions.METADATA_KEY: versions.settings_hash(profile, "training_pairs"),
                "sample_pairs": dg.MetadataValue.md(md_table(sample.iter_rows(), sample.columns)),
            },
            check_results=[problems_result("contract", problems)],
        )

    return dg.Definitions(assets=[datasets, training_pairs])
