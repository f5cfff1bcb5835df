"""Paper scale before a GPU bill: every CPU-side stage's time and peak memory as the work grows.

    .venv/bin/python benchmarks/scale.py                       # 10k / 100k / 1M passages (about 1.5 h on 2 cores)
    .venv/bin/python benchmarks/scale.py --sizes 10k           # the smoke size only (what the test suite runs)
    .venv/bin/python benchmarks/scale.py --stages bm25_index,dense_search --sizes 10k,100k
    .venv/bin/python benchmarks/scale.py --before-sizes 10k,100k   # main's code only where it ends in minutes
    .venv/bin/python benchmarks/scale.py --report-from a.json,b.json --markdown t.md   # tables of earlier runs

Data: synthetic, seeded, MS MARCO-shaped collections (`benchmarks/scale_data.py`: words and lengths from
the real collections in `HNR_DATASETS_DIR`, rescaled to MS MARCO's lengths) of 10k / 100k / 1M passages
with 1k / 10k / 100k training queries (1.06 pairs per query, as MS MARCO's 532,751 pairs for 502,939
queries). Every stage runs through the lib code its asset calls, each (stage, size, variant) in a fresh
child process, one after the other, so that its peak resident memory is its own (`ru_maxrss` of the
child; a JVM it starts is reported separately and added). A child that passes `--max-rss-gib` (8 by
default) is stopped and reported as such.

Variants: a stage whose code this benchmark's issue changed runs twice per size, `before` (the code as
it was, kept in `benchmarks/scale_before.py`) and `after` (the package), side by side in the same run.

Per stage the table gives seconds and peak RSS per size; then a growth exponent per step (the slope of
log seconds against log work between the two largest sizes, and the least-squares slope over all sizes)
and a projection to paper scale (8,841,823 passages, 502,939 queries, 532,751 pairs, BM25 top 100 for
the cross-encoder; BEIR corpora up to 5.4M documents): power law from the two largest sizes or linear
from them, whichever is larger. "Work" is what a step's cost must be proportional to: rows for most
steps, queries x documents for exact search (every query is scored against every document by
definition, so its exponent is taken against that product).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# ------------------------------------------------------------------------------------------ scale

SIZES = {"10k": (10_000, 1_000), "100k": (100_000, 10_000), "1M": (1_000_000, 100_000)}
PAPER = {
    "passages": 8_841_823,
    "queries": 502_939,
    "pairs": 532_751,
    "beir_documents": 5_416_568,  # FEVER / Climate-FEVER, the largest BEIR corpus of the study's ten
    "beir_queries": 6_666,  # FEVER test queries searched against it
    "run_hits": 10_000 * 1_000,  # Quora's 10,000 test queries x top 1,000 (the largest run file)
    "results_queries": 10_000,  # queries per dataset in the results table (Quora)
}
GENERATORS = ("g1", "g2", "g3", "g4")  # the paper profile's four generators: 22 recipes
DATASETS_RESULTS = (
    "scifact",
    "nfcorpus",
    "arguana",
    "scidocs",
    "fiqa",
    "trec-covid",
    "quora",
    "nq",
    "hotpotqa",
    "fever",
)
DENSE_QUERIES = 1_000  # queries of the dense search at every size (BEIR test sets: 50 to 10,000)
DENSE_DIM = 768  # distilbert-base-uncased, the paper's encoder
SCORES_TOP_K = 100  # hits per query of the synthetic run scored by the `scores` step
RESULTS_QUERY_SHARE = 10  # queries per results dataset = training queries / this
CE_TOP = 100  # the paper's cross-encoder candidates per query
BM25_TOP = 30  # the paper's BM25 rank window 1..30
CE_SCORING_PAIRS_PER_QUERY = 2  # the `ce_scoring` stage tokenises 2 pairs per training query
MAX_LENGTH = 512  # the paper's cross-encoder max_length


@dataclass(frozen=True)
class Stage:
    """One measured stage.

    Attributes:
        name: Stage key (`bm25_negatives[pyserini]`).
        run: The worker function (runs in the child).
        variants: `("after",)`, or `("before", "after")` for a stage this issue changed.
        work: Step name -> function of the child's counts giving the step's work at that size.
        paper: Step name -> that work at paper scale.
        memory: The count peak memory grows with, and its paper value.
        note: What the stage runs, for the table.
    """

    name: str
    run: Callable[[dict], dict]
    work: dict[str, Callable[[dict], float]]
    paper: dict[str, float]
    memory: tuple[Callable[[dict], float], float]
    variants: tuple[str, ...] = ("after",)
    note: str = ""
    before_sizes: tuple[str, ...] | None = None  # sizes the `before` variant runs at (None: all)
    before_skip: str = ""  # why it does not run at the others


# ------------------------------------------------------------------------------------------ helpers


def _timer() -> Callable[[str], None]:
    """`mark(step)` records the seconds since the previous mark under `step` (summed when repeated)."""
    state = {"t": time.perf_counter()}
    steps: dict[str, float] = {}

    def mark(step: str) -> None:
        now = time.perf_counter()
        steps[step] = steps.get(step, 0.0) + now - state["t"]
        state["t"] = now

    mark.steps = steps  # type: ignore[attr-defined]
    return mark


def _size_dir(ctx: dict) -> Path:
    return Path(ctx["work"]) / ctx["size"]


def _scratch(ctx: dict, name: str) -> Path:
    path = _size_dir(ctx) / "scratch" / f"{name}-{ctx['variant']}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _impl(variant: str):
    """The implementation a variant measures: main's code (`scale_before`) or the package."""
    if variant == "before":
        import scale_before

        return scale_before
    import scale_after

    return scale_after


# ------------------------------------------------------------------------------------------ prepare


def prepare(ctx: dict) -> dict:
    """Synthetic inputs of one size (cached: an existing size folder is reused)."""
    import numpy as np
    import polars as pl
    import scale_data

    from hnr_assets.lib.data.beir import convert_beir_split
    from hnr_assets.lib.data.pairs import build_pairs

    passages, queries = SIZES[ctx["size"]]
    base = _size_dir(ctx)
    done = base / "prepared.json"
    if done.is_file():
        return json.loads(done.read_text())
    mark = _timer()
    lang = scale_data.learn_language()
    counts = scale_data.write_collection(base / "beir", passages, queries, seed=ctx["seed"], language=lang)
    mark("collection")
    training = base / "training"
    shutil.rmtree(training, ignore_errors=True)
    training.mkdir(parents=True)
    convert_beir_split(base / "beir", "train", training)
    pairs, _ = build_pairs(*(pl.read_parquet(training / f"{n}.parquet") for n in ("queries", "qrels", "corpus")))
    pairs.write_parquet(training / "pairs.parquet", compression="zstd")
    mark("training_pairs")
    rng = np.random.default_rng(ctx["seed"] + 1)
    _negative_sets(base / "sets", pairs, training / "corpus.parquet", lang, rng)
    mark("negative_sets")
    _dense_and_scores_inputs(base, pairs, queries, rng)
    mark("score_inputs")
    out = {**counts, "pairs": pairs.height, "prepare_seconds": mark.steps}  # type: ignore[attr-defined]
    done.write_text(json.dumps(out, indent=2))
    return out


def _not_positive(docs, corpus, base):
    """Corpus rows drawn as negatives, each moved to the next row while its text equals the pair's
    positive (the synthetic corpus repeats 2 % of its texts, so a random draw can copy the positive)."""
    import numpy as np
    import polars as pl

    from hnr_assets.lib.mining.negatives import text_hash_expr

    hashes = corpus.select(text_hash_expr(pl.col("text")).alias("h"))["h"].to_numpy()
    positive = base.select(text_hash_expr(pl.col("positive")).alias("h"))["h"].to_numpy()
    docs = np.asarray(docs)
    for _ in range(100):
        clash = hashes[docs] == positive
        if not clash.any():
            return docs
        docs[clash] = (docs[clash] + 1) % len(hashes)
    raise RuntimeError("could not draw negatives that differ from their positives")


def _negative_sets(folder: Path, pairs, corpus_path: Path, lang, rng) -> None:
    """Six negative sets in the shared format (bm25, ce: corpus passages; llm-g1..4: written) and the
    cross-encoder scores of each LLM set, as their assets would store them; 3 % of pairs are short."""
    import numpy as np
    import polars as pl
    import scale_data

    from hnr_assets.lib.data.pairs import passage_expr
    from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA
    from hnr_assets.lib.training.training_sets import CE_SCORES_SCHEMA

    folder.mkdir(parents=True, exist_ok=True)
    corpus = pl.read_parquet(corpus_path).select("doc_id", passage_expr().alias("text"))
    n_pairs = pairs.height
    per_pair = np.where(rng.random(n_pairs) < 0.03, rng.integers(1, 5, n_pairs), 5)
    pair_idx = np.repeat(np.arange(n_pairs), per_pair)
    ranks = np.concatenate([np.arange(1, k + 1) for k in per_pair]).astype(np.int32)
    base = pairs.select("query_id", "positive_id", "query", "positive")[pair_idx]
    pool = scale_data.llm_passages(lang, rng, min(200_000, 5 * n_pairs))
    for source in ("bm25", "ce", *(f"llm-{g}" for g in GENERATORS)):
        if source in ("bm25", "ce"):
            docs = _not_positive(rng.integers(0, corpus.height, size=len(pair_idx)), corpus, base)
            picked = corpus[docs]
            neg_id, neg_text = picked["doc_id"], picked["text"]
            score = pl.Series(rng.random(len(pair_idx)) * 30.0)
        else:
            neg_text = pl.Series([pool[i] for i in rng.integers(0, len(pool), size=len(pair_idx))])
            neg_id = pl.Series([None] * len(pair_idx), dtype=pl.String)
            score = pl.Series([None] * len(pair_idx), dtype=pl.Float64)
        frame = base.with_columns(
            pl.Series("negative_rank", ranks),
            neg_id.alias("negative_id"),
            neg_text.alias("negative"),
            score.alias("score"),
            pl.lit(source).alias("source"),
        ).select(list(NEGATIVES_SCHEMA))
        frame.cast(NEGATIVES_SCHEMA).write_parquet(folder / f"{source}.parquet", compression="zstd")
        if source.startswith("llm-"):
            positive = 0.5 + 0.5 * rng.random(n_pairs)
            scores = pl.DataFrame(
                {
                    "query_id": base["query_id"],
                    "positive_id": base["positive_id"],
                    "negative_rank": ranks,
                    "negative_score": rng.random(len(pair_idx)) * positive[pair_idx] * 1.02,
                    "positive_score": positive[pair_idx],
                }
            ).cast(CE_SCORES_SCHEMA)
            scores.write_parquet(folder / f"{source}.ce_scores.parquet", compression="zstd")


def _dense_and_scores_inputs(base: Path, pairs, queries: int, rng) -> None:
    """A run to score (queries x SCORES_TOP_K hits) and the score folders the results table reads."""
    import numpy as np
    import polars as pl

    from hnr_assets.lib.evaluation.scores import METRICS, write_scores
    from hnr_assets.lib.training.recipes import system_keys

    qids = pairs["query_id"].unique(maintain_order=True).to_numpy()[:queries]
    n = len(qids)
    k = SCORES_TOP_K
    # k distinct documents a query (a run lists a document once): a random start, then a prime stride that
    # does not divide the id range, so no two of the k ids collide.
    docs = (rng.integers(0, 10 * n, size=(n, 1)) + 7919 * np.arange(k)[None, :]) % (10 * n)
    run = pl.DataFrame(
        {
            "query_id": np.repeat(qids, k),
            "doc_id": docs.reshape(-1).astype(str),
            "score": np.sort(rng.random((n, k)).astype(np.float32), axis=1)[:, ::-1].reshape(-1),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        }
    )
    hit_rel = rng.random(n) < 0.7  # 70 % of queries have their relevant document in the run
    rel_doc = np.where(hit_rel, docs[np.arange(n), rng.integers(0, k, n)], -1 - np.arange(n)).astype(str)
    qrels = pl.DataFrame({"query_id": qids, "doc_id": rel_doc, "grade": np.ones(n, dtype=np.int32)})
    (base / "scores_input").mkdir(parents=True, exist_ok=True)
    run.write_parquet(base / "scores_input" / "run.parquet")
    qrels.write_parquet(base / "scores_input" / "qrels.parquet")

    per_dataset = max(2, n // RESULTS_QUERY_SHARE)
    systems = system_keys(list(GENERATORS))
    one_run = pl.DataFrame({"query_id": ["q"], "doc_id": ["d"], "score": [1.0], "rank": [1]}).cast(
        {"score": pl.Float32, "rank": pl.Int32}
    )
    for d, dataset in enumerate(DATASETS_RESULTS):
        ids = [f"{dataset}-{i}" for i in range(per_dataset)]
        difficulty = rng.random(per_dataset)
        for s, system in enumerate(systems):
            values = {
                m: np.clip(difficulty * 0.6 + 0.02 * ((s + d) % 5) + rng.normal(0, 0.15, per_dataset), 0, 1)
                for m in METRICS
            }
            per_query = pl.DataFrame({"query_id": ids, **values})
            metrics = {m: float(values[m].mean()) for m in METRICS} | {"queries": per_dataset}
            write_scores(base / "results_input" / system / dataset, one_run, per_query, metrics)


# ------------------------------------------------------------------------------------------ stages
# Each stage mirrors its asset's body: the same lib calls in the same order, minus Dagster and MLflow.


def stage_datasets(ctx: dict) -> dict:
    """`training_pairs` + `datasets`: validate the BEIR folder into Parquet, build and check the pairs."""
    import polars as pl

    L = _impl(ctx["variant"])
    base = _size_dir(ctx)
    tmp = _scratch(ctx, "datasets")
    mark = _timer()
    stats = L.convert_beir_split(base / "beir", "train", tmp)
    mark("convert")
    problems = L.validate_stored_split(tmp)
    mark("validate")
    pairs, _ = L.build_pairs(*(pl.read_parquet(tmp / f"{n}.parquet") for n in ("queries", "qrels", "corpus")))
    pairs.write_parquet(tmp / "pairs.parquet", compression="zstd")
    mark("pairs")
    corpus_ids = pl.read_parquet(tmp / "corpus.parquet", columns=["doc_id"])["doc_id"]
    problems += L.validate_pairs(pl.read_parquet(tmp / "pairs.parquet"), corpus_ids)
    mark("check")
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {"passages": stats.documents, "queries": stats.queries, "pairs": pairs.height},
        "problems": problems,
    }


def _engine(ctx: dict, backend: str):
    from hnr_assets.lib.retrieval.base import BM25Config

    config = BM25Config(backend=backend, threads=ctx["threads"], java_heap=ctx["java_heap"])
    return _impl(ctx["variant"]).make_engine(config)


def stage_bm25_index(ctx: dict, backend: str) -> dict:
    """`bm25_index`: index the training corpus."""
    import pyarrow.parquet as pq

    corpus = _size_dir(ctx) / "training" / "corpus.parquet"
    target = _size_dir(ctx) / f"index-{backend}-{ctx['variant']}"
    mark = _timer()
    handle = _engine(ctx, backend).build(corpus, target)
    mark("index")
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {"passages": pq.ParquetFile(corpus).metadata.num_rows, "documents": handle.documents},
    }


def _index(ctx: dict, backend: str) -> Path:
    """The index the `bm25_index` stage of this size built (after variant), or build it (not timed)."""
    base = _size_dir(ctx)
    for variant in ("after", "before"):
        if (base / f"index-{backend}-{variant}" / "manifest.json").is_file():
            return base / f"index-{backend}-{variant}"
    target = base / f"index-{backend}-after"
    _engine(ctx, backend).build(base / "training" / "corpus.parquet", target)
    return target


def _negative_checks(negatives, pairs, variant: str) -> dict:
    """What `defs.checks.negative_set_check_results` evaluates on a stored negative set."""
    from hnr_assets.lib.mining.negatives import coverage

    problems = _impl(variant).validate_negatives(negatives)
    return {"problems": sum(len(v) for v in problems.values()), "full_share": coverage(negatives, pairs)["full_share"]}


def stage_bm25_negatives(ctx: dict, backend: str) -> dict:
    """`bm25_negatives`: BM25 top 30 of every training query, 5 negatives per pair, stored and checked."""
    import polars as pl

    L = _impl(ctx["variant"])
    files = _size_dir(ctx) / "training"
    engine = _engine(ctx, backend)
    handle = engine.open(_index(ctx, backend))
    target = _scratch(ctx, f"bm25_negatives-{backend}")
    mark = _timer()
    pairs = pl.read_parquet(files / "pairs.parquet")
    qrels = pl.read_parquet(files / "qrels.parquet")
    out = L.bm25_negatives(engine, handle, pairs, qrels, files / "corpus.parquet", target, BM25_TOP, mark)
    stored = pl.read_parquet(target / "negatives.parquet")
    checks = _negative_checks(stored, pairs, ctx["variant"])
    mark("check")
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {
            "queries": pairs["query_id"].n_unique(),
            "pairs": pairs.height,
            "passages": handle.documents,
            "hits": out["hits"],
            "negatives": stored.height,
            **checks,
        },
    }


def stage_ce_negatives(ctx: dict) -> dict:
    """`ce_negatives`: BM25 top 100 (Lucene), positives removed, a constant-cost scorer, 5 kept per pair."""
    import polars as pl

    L = _impl(ctx["variant"])
    files = _size_dir(ctx) / "training"
    backend = ctx["ce_backend"]
    engine = _engine(ctx, backend)
    handle = engine.open(_index(ctx, backend))
    target = _scratch(ctx, "ce_negatives")
    mark = _timer()
    pairs = pl.read_parquet(files / "pairs.parquet")
    qrels = pl.read_parquet(files / "qrels.parquet")
    out = L.ce_negatives(engine, handle, pairs, qrels, files / "corpus.parquet", target, CE_TOP, LengthScorer(), mark)
    stored = pl.read_parquet(target / "negatives.parquet")
    checks = _negative_checks(stored, pairs, ctx["variant"])
    mark("check")
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {
            "queries": pairs["query_id"].n_unique(),
            "pairs": pairs.height,
            "passages": handle.documents,
            "candidates": out["candidates"],
            "negatives": stored.height,
            **checks,
        },
    }


class LengthScorer:
    """A cross-encoder stand-in whose cost is negligible: the platform is measured, not a model.

    Scores are a deterministic function of the texts' lengths in (0, 1), so the selection and the
    false-negative filter have real work to do. It has the `CrossEncoderScorer.score` signature.
    """

    runtime = "constant"
    max_length = MAX_LENGTH

    def score(self, queries, passages, progress=None):
        import numpy as np

        q = np.fromiter((len(t) for t in queries), dtype=np.float64, count=len(queries))
        p = np.fromiter((len(t) for t in passages), dtype=np.float64, count=len(passages))
        if progress is not None:
            progress(len(p))
        return 1.0 / (1.0 + np.exp(-np.sin(q * 0.37 + p * 0.011) * 3.0))


def stage_ce_scoring(ctx: dict) -> dict:
    """`CrossEncoderScorer.score` on (query, passage) pairs: real WordPiece tokenisation at 512 tokens,
    length-sorted batching and padding; the forward pass is replaced by a constant (no model)."""
    import numpy as np
    import polars as pl

    L = _impl(ctx["variant"])
    files = _size_dir(ctx) / "training"
    pairs = pl.read_parquet(files / "pairs.parquet", columns=["query"])
    corpus = pl.read_parquet(files / "corpus.parquet", columns=["text"])["text"]
    n = CE_SCORING_PAIRS_PER_QUERY * pairs["query"].n_unique()
    rng = np.random.default_rng(7)
    queries = pairs["query"].gather(rng.integers(0, pairs.height, n)).to_list()
    passages = corpus.gather(rng.integers(0, corpus.len(), n)).to_list()
    del corpus
    scorer = L.tokenizing_scorer(MAX_LENGTH, 128)
    mark = _timer()
    scores = scorer.score(queries, passages)
    mark("score")
    return {"steps": mark.steps, "counts": {"pairs": n, "scored": len(scores)}}  # type: ignore[attr-defined]


class CannedEngine:
    """A generator stand-in: answers each request with a seeded completion made of synthetic passages.

    The mix follows what the study's prompt gets back: mostly a JSON array of five passages, some
    numbered lists, some with a `<think>` block, a few cut off at the token limit or unusable (so that
    retries happen). Cost per completion is a few list look-ups: the platform's parsing, validation,
    retries and shards are what is measured.
    """

    name = "canned"

    def __init__(self, pool: list[str]) -> None:
        self.pool = pool

    def generate(self, requests):
        import random

        from hnr_assets.lib.generation.backends import Completion, GenerationResult

        results = []
        for request in requests:
            rng = random.Random(request.seed)
            completions = []
            for _ in range(request.n):
                texts = [self.pool[rng.randrange(len(self.pool))] for _ in range(5)]
                kind = rng.random()
                finish = "stop"
                if kind < 0.75:
                    text = json.dumps(texts)
                elif kind < 0.85:
                    text = "Here are five passages:\n\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))
                elif kind < 0.92:
                    text = "<think>The user wants hard negatives.</think>\n" + json.dumps(texts[:4])
                elif kind < 0.96:
                    text, finish = json.dumps(texts)[: rng.randrange(200, 900)], "length"
                else:
                    text = "I'm sorry, I cannot help with that."
                completions.append(Completion(text, max(1, len(text) // 4), finish))
            results.append(GenerationResult(request.request_id, completions, prompt_tokens=120))
        return results


def stage_llm_negatives(ctx: dict) -> dict:
    """`llm_negatives` for one generator: prompts, canned completions, parsing, validation, retries,
    shards, the final files and the negative-set checks (paper settings: prompt v1, 3 attempts)."""
    import numpy as np
    import polars as pl
    import scale_data

    from hnr_assets.lib.generation.backends import Sampling
    from hnr_assets.lib.generation.llm_output import ValidationRules
    from hnr_assets.lib.generation.prompts import load_prompt
    from hnr_assets.lib.generation.runner import SHARD_TABLES, GenerationPlan
    from hnr_assets.lib.generation.shards import ShardStore

    L = _impl(ctx["variant"])
    files = _size_dir(ctx) / "training"
    pool = scale_data.llm_passages(scale_data.learn_language(), np.random.default_rng(3), 20_000)
    target = _scratch(ctx, "llm_negatives")
    mark = _timer()
    all_pairs = pl.read_parquet(files / "pairs.parquet")
    pairs = L.select_pairs(all_pairs, None, 0)
    plan = GenerationPlan(
        source="llm-g1",
        template=load_prompt("v1"),
        completions=1,
        max_attempts=3,
        base_seed=0,
        rules=ValidationRules(),
        pairs_per_shard=4096,
    )
    store = ShardStore(target / "shards", plan.signature_settings("canned", "canned", Sampling()), SHARD_TABLES)
    with store:
        done = len(store.done_pairs() & set(pairs.select("query_id", "positive_id").iter_rows()))
        report = L.generate_negatives(pairs, CannedEngine(pool), plan, store)
        mark("generate")
        outputs = L.collect_outputs(store, pairs)
    L.write_outputs(outputs, target)
    summary = L.summarize(outputs)
    mark("collect")
    checks = _negative_checks(outputs["negatives"], pairs, ctx["variant"])
    mark("check")
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {
            "pairs": pairs.height,
            "resumed": done,
            "requests": report.requests,
            "negatives": summary["negatives"],
            "yield": round(summary["yield"], 4),
            **checks,
        },
    }


def stage_training_sets(ctx: dict) -> dict:
    """`training_sets` for every recipe of four generators (22 recipes), as the asset assembles them."""
    import polars as pl

    from hnr_assets.lib.runtime.io import frame_fingerprint
    from hnr_assets.lib.training.recipes import derive_recipes

    L = _impl(ctx["variant"])
    base = _size_dir(ctx)
    sets = base / "sets"
    pairs_file = base / "training" / "pairs.parquet"
    sources = ["bm25", "ce", *(f"llm-{g}" for g in GENERATORS)]
    target = _scratch(ctx, "training_sets")
    mark = _timer()
    rows_total = 0
    problems = 0
    recipes = derive_recipes(list(GENERATORS))
    for recipe in recipes:
        frames = {s: pl.read_parquet(sets / f"{s}.parquet") for s in sources}  # same_queries: every set
        mark("read")
        keep = L.common_pairs(frames, 1)
        used = {s: frames[s] for s in recipe.sources}
        for source in recipe.llm_sources if recipe.ce_filtered else ():
            used[source], _ = L.apply_ce_filter(
                used[source],
                pl.read_parquet(sets / f"{source}.ce_scores.parquet"),
                relative_margin=0.05,
                absolute_margin=None,
            )
        assembled = L.assemble_training_set(
            recipe.sources,
            used,
            per_row=5,
            min_negatives=1,
            keep_pairs=keep,
            query_universe=pl.read_parquet(pairs_file, columns=["query_id"])["query_id"].to_list(),
            validation_fraction=0.1,
            split_seed=0,
        )
        mark("assemble")
        frame_fingerprint(assembled.rows)
        folder = target / recipe.key
        folder.mkdir()
        assembled.rows.write_parquet(folder / "training_set.parquet", compression="zstd")
        assembled.split.write_parquet(folder / "split.parquet", compression="zstd")
        mark("write")
        stored = pl.read_parquet(folder / "training_set.parquet")
        problems += sum(len(v) for v in L.validate_training_set(stored, 5).values())
        rows_total += stored.height
        del frames, used, assembled, stored
        mark("check")
        shutil.rmtree(folder)
    pairs = pl.read_parquet(pairs_file, columns=["query_id"]).height
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {"pairs": pairs, "recipes": len(recipes), "rows": rows_total, "problems": problems},
    }


def stage_dense_search(ctx: dict) -> dict:
    """Dense evaluation without the encoder: random 768-d embeddings of the corpus and 1,000 queries,
    normalised as `encode` returns them, cached (`EmbeddingCache`) and searched exactly (top 1,000)."""
    import numpy as np
    import pyarrow.parquet as pq

    from hnr_assets.lib.retrieval.dense import CacheKey, EmbeddingCache, exact_search

    L = _impl(ctx["variant"])
    corpus = _size_dir(ctx) / "training" / "corpus.parquet"
    doc_ids = pq.read_table(corpus, columns=["doc_id"]).column(0).to_pylist()
    rng = np.random.default_rng(11)
    raw = rng.standard_normal((len(doc_ids), DENSE_DIM), dtype=np.float32)  # what the encoder hands back
    queries = L.normalize_encoded(rng.standard_normal((DENSE_QUERIES, DENSE_DIM), dtype=np.float32))
    query_ids = [f"q{i}" for i in range(DENSE_QUERIES)]
    mark = _timer()
    matrix = L.normalize_encoded(raw)
    del raw
    mark("normalize")
    cache = EmbeddingCache(_scratch(ctx, "dense_cache"))
    key = CacheKey("bench", "synthetic", "corpus", ctx["size"], 512, "fp32")
    cache.store(key, doc_ids, matrix, {})
    mark("cache")
    run = exact_search(queries, matrix, query_ids, doc_ids, 1000)
    mark("search")
    shutil.rmtree(cache.root, ignore_errors=True)
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {"documents": len(doc_ids), "queries": DENSE_QUERIES, "run_rows": run.height},
    }


def stage_scores(ctx: dict) -> dict:
    """`scores` without the search: score a run of top-100 hits per query, write the folder, check it."""
    from hnr_assets.lib.data.beir import load_qrels
    from hnr_assets.lib.evaluation.scores import metrics_out_of_range, read_metrics, read_per_query, read_run, score_run

    L = _impl(ctx["variant"])
    inputs = _size_dir(ctx) / "scores_input"
    run = read_run(inputs / "run.parquet")
    target = _scratch(ctx, "scores") / "folder"
    mark = _timer()
    qrels = load_qrels(inputs / "qrels.parquet")
    per_query, means = score_run(run, qrels)
    mark("score")
    L.write_scores(target, run, per_query, {**means, "queries": per_query.height})
    mark("write")
    problems = L.validate_run(read_run(target / "run.parquet"), SCORES_TOP_K, judged=set(qrels))
    problems += metrics_out_of_range(read_per_query(target), read_metrics(target))
    mark("check")
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {"queries": len(qrels), "run_rows": run.height, "problems": len(problems)},
    }


def stage_results(ctx: dict) -> dict:
    """`results`: 24 systems x 10 datasets, significance against `bm25` (t-test and 10,000 bootstrap
    resamples, Holm), the tables, the heatmap and the bar chart."""
    import polars as pl

    from hnr_assets.lib.evaluation import results as lib_results
    from hnr_assets.lib.training.recipes import system_keys

    os.environ.setdefault("MPLCONFIGDIR", str(Path(ctx["work"]) / "mplconfig"))
    from hnr_assets.lib.evaluation import plots

    inputs = _size_dir(ctx) / "results_input"
    target = _scratch(ctx, "results")
    systems = system_keys(list(GENERATORS))
    mark = _timer()
    table = lib_results.collect(
        systems, list(DATASETS_RESULTS), lambda s, d: inputs / s / d, lib_results.SignificanceSettings()
    )
    mark("collect")
    lib_results.markdown_table(table)
    for name, frame in (("results", table.table), ("significance", table.tests), ("scores_long", table.long)):
        frame.write_parquet(target / f"{name}.parquet")
        frame.write_csv(target / f"{name}.csv")
    plots.heatmap(table, target / "heatmap.png")
    plots.averages_bar(table, target / "averages.png")
    mark("write")
    per_dataset = pl.read_parquet(inputs / systems[0] / DATASETS_RESULTS[0] / "per_query.parquet").height
    return {
        "steps": mark.steps,  # type: ignore[attr-defined]
        "counts": {"systems": len(systems), "datasets": len(DATASETS_RESULTS), "queries": per_dataset},
    }


# ------------------------------------------------------------------------------------------ registry


def _c(key: str, factor: float = 1.0) -> Callable[[dict], float]:
    return lambda counts: factor * counts[key]


def _qp(counts: dict) -> float:
    return float(counts["queries"]) * float(counts["passages"])


PAPER_QP = PAPER["queries"] * PAPER["passages"]


def _stages() -> list[Stage]:
    changed = ("before", "after")
    stages = [
        Stage(
            "datasets",
            stage_datasets,
            work=dict.fromkeys(("convert", "validate", "pairs", "check"), _c("passages")),
            paper=dict.fromkeys(("convert", "validate", "pairs", "check"), PAPER["passages"]),
            memory=(_c("passages"), PAPER["passages"]),
            note="BEIR jsonl -> validated Parquet, contract check, training pairs",
        )
    ]
    for backend in ("pyserini", "bm25s"):
        stages.append(
            Stage(
                f"bm25_index[{backend}]",
                lambda ctx, b=backend: stage_bm25_index(ctx, b),
                work={"index": _c("passages")},
                paper={"index": PAPER["passages"]},
                memory=(_c("passages"), PAPER["passages"]),
                variants=changed if backend == "bm25s" else ("after",),
                note="index the training corpus",
            )
        )
    for backend in ("pyserini", "bm25s"):
        stages.append(
            Stage(
                f"bm25_negatives[{backend}]",
                lambda ctx, b=backend: stage_bm25_negatives(ctx, b),
                work={"search": _qp, "mine": _c("hits"), "write": _c("hits"), "check": _c("pairs")},
                paper={
                    "search": PAPER_QP,
                    "mine": BM25_TOP * PAPER["queries"],
                    "write": BM25_TOP * PAPER["queries"],
                    "check": PAPER["pairs"],
                },
                memory=(_c("passages"), PAPER["passages"]),
                variants=changed,
                before_sizes=("10k", "100k") if backend == "bm25s" else None,
                before_skip="not run: main's bm25s search (np.argpartition over every document, 28 ms a query "
                "at 100k documents) would take ~8 h for 100k queries on 1M",
                note=f"top {BM25_TOP}, positives and duplicates excluded, 5 per pair, stored, checked",
            )
        )
    stages += [
        Stage(
            "ce_negatives",
            stage_ce_negatives,
            work={
                "search": _qp,
                "assemble": _c("candidates"),
                "score": _c("candidates"),
                "select": _c("candidates"),
                "write": _c("candidates"),
                "check": _c("pairs"),
            },
            paper={
                "search": PAPER_QP,
                **dict.fromkeys(("assemble", "score", "select", "write"), CE_TOP * PAPER["queries"]),
                "check": PAPER["pairs"],
            },
            memory=(_c("passages"), PAPER["passages"]),
            variants=changed,
            note=f"top {CE_TOP} candidates, constant-cost scorer, positive-aware filter, 5 per pair",
        ),
        Stage(
            "ce_scoring",
            stage_ce_scoring,
            work={"score": _c("pairs")},
            paper={"score": CE_TOP * PAPER["queries"] + PAPER["pairs"]},
            memory=(_c("pairs"), CE_TOP * PAPER["queries"] + PAPER["pairs"]),
            variants=changed,
            note=f"CrossEncoderScorer.score: WordPiece at {MAX_LENGTH} tokens, sorted batches of 128, no model",
        ),
        Stage(
            "llm_negatives",
            stage_llm_negatives,
            work=dict.fromkeys(("generate", "collect", "check"), _c("pairs")),
            paper=dict.fromkeys(("generate", "collect", "check"), PAPER["pairs"]),
            memory=(_c("pairs"), PAPER["pairs"]),
            variants=changed,
            note="one generator: prompts, canned completions, parse, validate, retry, shards, checks",
        ),
        Stage(
            "training_sets",
            stage_training_sets,
            work=dict.fromkeys(("read", "assemble", "write", "check"), _c("pairs")),
            paper=dict.fromkeys(("read", "assemble", "write", "check"), PAPER["pairs"]),
            memory=(_c("pairs"), PAPER["pairs"]),
            variants=changed,
            note="all 22 recipes of four generators (CE filter on the -filtered ones), written, checked",
        ),
        Stage(
            "dense_search",
            stage_dense_search,
            work={
                "normalize": _c("documents"),
                "cache": _c("documents"),
                "search": lambda c: float(c["documents"]) * c["queries"],
            },
            paper={
                "normalize": PAPER["beir_documents"],
                "cache": PAPER["beir_documents"],
                "search": PAPER["beir_documents"] * PAPER["beir_queries"],
            },
            memory=(_c("documents"), PAPER["beir_documents"]),
            variants=changed,
            note=f"{DENSE_DIM}-d random embeddings, {DENSE_QUERIES} queries, exact top 1,000",
        ),
        Stage(
            "scores",
            stage_scores,
            work=dict.fromkeys(("score", "write", "check"), _c("run_rows")),
            paper=dict.fromkeys(("score", "write", "check"), PAPER["run_hits"]),
            memory=(_c("run_rows"), PAPER["run_hits"]),
            variants=("after",),
            note=f"score a run of top {SCORES_TOP_K} per query (pytrec_eval), write, check",
        ),
        Stage(
            "results",
            stage_results,
            work=dict.fromkeys(("collect", "write"), _c("queries")),
            paper=dict.fromkeys(("collect", "write"), PAPER["results_queries"]),
            memory=(_c("queries"), PAPER["results_queries"]),
            variants=("after",),
            note="24 systems x 10 datasets, t-test + bootstrap (10,000), Holm, tables, plots",
        ),
    ]
    return stages


# ------------------------------------------------------------------------------------------ children


def _tree_rss_mib(root: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc), MiB."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid and p not in tree]
        tree.update(kids)
        frontier += kids
    total = 0
    for pid in tree:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run_child(spec: dict, max_rss_mib: float, timeout_s: float, log_path: Path) -> dict:
    """Run one worker in a fresh process group; stop it when its tree passes `max_rss_mib` or the timeout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            start_new_session=True,
            text=True,
        )
        killed = None
        monitor_peak = 0.0
        last_check = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            if now - last_check >= 0.5:
                last_check = now
                rss = _tree_rss_mib(proc.pid)
                monitor_peak = max(monitor_peak, rss)
                if rss > max_rss_mib:
                    killed = f"stopped: resident memory passed {max_rss_mib / 1024:.0f} GiB ({rss / 1024:.1f} GiB)"
                elif now - started > timeout_s:
                    killed = f"stopped: ran longer than {timeout_s:.0f} s"
                if killed:
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out = proc.stdout.read() if proc.stdout else ""
    record = {
        "wall_s": time.perf_counter() - started,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "monitor_peak_mib": monitor_peak,
        "wait4_maxrss_mib": usage.ru_maxrss / 1024,
    }
    if killed or proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return {**record, "ok": False, "error": killed or f"exit {proc.returncode}: " + " | ".join(tail)}
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    return {**record, "ok": True, **json.loads(lines[-1])}


def worker(spec: dict) -> None:
    """Child side: run one stage (or the preparation of a size), print one JSON line."""
    ctx = spec
    if spec["stage"] == "prepare":
        result = {"steps": {}, "counts": prepare(ctx)}
    else:
        stage = next(s for s in _stages() if s.name == spec["stage"])
        result = stage.run(ctx)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result.update(rss_self_mib=own, rss_children_mib=kids, peak_mib=own + kids)
    print(json.dumps(result, default=str))


# ------------------------------------------------------------------------------------------ analysis

MIN_STEP_SECONDS = 1.0  # a step shorter than this at the largest size is fixed costs: no exponent asserted


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log y against log x."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def _project(points: list[tuple[float, float]], at: float) -> float | None:
    """Value at `at` from the two largest points: power law or straight line, whichever is larger."""
    pts = sorted(p for p in points if p[0] > 0)
    if len(pts) < 2:
        return None  # one size says nothing about growth
    x2, y2 = pts[-1]
    x1, y1 = pts[-2]
    linear = y2 + (y2 - y1) / (x2 - x1) * (at - x2) if x2 != x1 else y2
    power = y2 * (at / x2) ** (math.log(y2 / y1) / math.log(x2 / x1)) if y1 > 0 and y2 > 0 and x2 != x1 else y2
    return max(linear, power)


@dataclass
class Summary:
    stage: str
    variant: str
    sizes: list[str]
    steps: dict[str, dict]
    rss: dict
    paper_seconds: float | None
    failed: list[str]


def summarize(stage: Stage, variant: str, records: list[dict]) -> Summary:
    """Exponents and paper-scale projections of one stage and variant."""
    ok = [r for r in records if r["ok"]]
    failed = [f"{r['size']}: {r['error']}" for r in records if not r["ok"]]
    steps: dict[str, dict] = {}
    total_paper = 0.0
    for step, work_of in stage.work.items():
        pts = [(work_of(r["counts"]), r["steps"].get(step, 0.0)) for r in ok]
        pts.sort()
        last = _slope(pts[-2:]) if len(pts) >= 2 else None
        paper = _project(pts, stage.paper[step])
        total_paper += paper or 0.0
        steps[step] = {
            "exponent": last,
            "exponent_all": _slope(pts),
            "seconds_largest": pts[-1][1] if pts else None,
            "paper_seconds": paper,
            "asserted": bool(pts) and pts[-1][1] >= MIN_STEP_SECONDS and last is not None,
        }
    mem_of, mem_paper = stage.memory
    py = sorted((mem_of(r["counts"]), r["rss_self_mib"]) for r in ok)
    jvm = sorted((mem_of(r["counts"]), r["rss_children_mib"]) for r in ok)
    both = sorted((mem_of(r["counts"]), r["peak_mib"]) for r in ok)
    jvm_used = any(v > 50 for _, v in jvm)
    rss = {
        "exponent": _slope(both[-2:]) if len(both) >= 2 else None,
        "largest_mib": both[-1][1] if both else None,
        "paper_python_mib": _project(py, mem_paper),
        "paper_jvm_mib": _project(jvm, mem_paper) if jvm_used else 0.0,
    }
    grows = len(ok) >= 2  # one size says nothing about growth: no projection
    rss["paper_mib"] = (rss["paper_python_mib"] or 0.0) + (rss["paper_jvm_mib"] or 0.0) if grows else None
    return Summary(stage.name, variant, [r["size"] for r in ok], steps, rss, total_paper if grows else None, failed)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds:.2f} s"


def _fmt_mib(mib: float | None) -> str:
    if mib is None:
        return "-"
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def _fmt_e(e: float | None) -> str:
    return "-" if e is None else f"{e:.2f}"


def report(stages: list[Stage], records: list[dict], sizes: list[str]) -> tuple[str, list[Summary]]:
    """The Markdown tables: measurements, then exponents and projections."""
    lines = ["## Measurements (seconds per step; peak RSS = Python + JVM)", ""]
    lines += ["| stage | variant | size | steps (s) | total s | peak RSS | notes |", "|---|---|---|---|---|---|---|"]
    summaries = []
    for stage in stages:
        for variant in stage.variants:
            recs = [r for r in records if r["stage"] == stage.name and r["variant"] == variant]
            if not recs:
                continue
            for r in sorted(recs, key=lambda r: sizes.index(r["size"])):
                if not r["ok"]:
                    lines.append(f"| {stage.name} | {variant} | {r['size']} | - | - | - | {r['error'][:120]} |")
                    continue
                steps = ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items())
                peak = _fmt_mib(r["rss_self_mib"])
                if r["rss_children_mib"] > 50:
                    peak += f" + {_fmt_mib(r['rss_children_mib'])}"
                notes = r.get("repeats_note", "")
                total = sum(r["steps"].values())
                lines.append(f"| {stage.name} | {variant} | {r['size']} | {steps} | {total:.1f} | {peak} | {notes} |")
            summaries.append(summarize(stage, variant, recs))
    lines += [
        "",
        "## Growth exponents and paper scale",
        "",
        "Exponent: slope of log seconds against log work between the two largest sizes (over all sizes in "
        f"brackets); steps under {MIN_STEP_SECONDS:.0f} s at the largest size are fixed costs and marked *. "
        "Paper: 8,841,823 passages, 502,939 queries, 532,751 pairs, top 100 for the cross-encoder, "
        "5.4M-document BEIR corpora; time on this machine.",
        "",
        "| stage | variant | step exponents | RSS exponent | paper time | paper peak RSS | fits 32 GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        exps = ", ".join(
            f"{k} {_fmt_e(v['exponent'])} ({_fmt_e(v['exponent_all'])}){'' if v['asserted'] else '*'}"
            for k, v in s.steps.items()
        )
        paper = s.rss["paper_mib"]
        jvm = f" (JVM {_fmt_mib(s.rss['paper_jvm_mib'])})" if s.rss.get("paper_jvm_mib") else ""
        fits = "-" if paper is None else ("yes" if paper <= 32 * 1024 else "**no**")
        lines.append(
            f"| {s.stage} | {s.variant} | {exps} | {_fmt_e(s.rss['exponent'])} | {_fmt_s(s.paper_seconds)} | "
            f"{_fmt_mib(paper)}{jvm} | {fits} |"
        )
        for failure in s.failed:
            lines.append(f"| {s.stage} | {s.variant} | {failure[:160]} | | | | |")
    return "\n".join(lines), summaries


def before_after(records: list[dict], sizes: list[str]) -> str:
    """Side-by-side ratios of the stages measured in both variants."""
    lines = ["## Before / after, same run", ""]
    lines += [
        "| stage | size | before s | after s | speed-up | before peak | after peak |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["stage"], r["size"]) for r in records if r["variant"] == "before"}, key=lambda k: (k[0], sizes.index(k[1]))
    )
    for stage, size in keys:
        pair = {r["variant"]: r for r in records if r["stage"] == stage and r["size"] == size}
        b, a = pair.get("before"), pair.get("after")
        if not b or not a:
            continue
        bs = sum(b["steps"].values()) if b["ok"] else None
        as_ = sum(a["steps"].values()) if a["ok"] else None
        ratio = f"{bs / as_:.1f}x" if bs and as_ else "-"
        cells = [_fmt_s(bs) if b["ok"] else b["error"][:60], _fmt_s(as_) if a["ok"] else a["error"][:60], ratio]
        cells += [_fmt_mib(r["peak_mib"]) if r["ok"] else "-" for r in (b, a)]
        lines.append(f"| {stage} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _others() -> str:
    """The busiest processes of the machine (what else was running)."""
    out = subprocess.run(
        ["ps", "-eo", "pid,user,pcpu,rss,etime,comm", "--sort=-pcpu"], capture_output=True, text=True, check=False
    )
    return "\n".join(out.stdout.splitlines()[:8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--stages", default="", help="comma list of stage names, run in this order (default: all)")
    parser.add_argument("--variants", default="before,after", help="variants to run where a stage has them")
    parser.add_argument(
        "--before-sizes",
        default="",
        help="run the `before` variants only at these sizes (e.g. 10k,100k: main's code at 1M takes hours)",
    )
    parser.add_argument(
        "--report-from",
        default="",
        help="no run: the tables of the records in these JSON files (comma list; scale.json or scale.partial.json)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench-scale", help="data and scratch folder")
    parser.add_argument("--max-rss-gib", type=float, default=8.0, help="stop a child whose memory passes this")
    parser.add_argument("--timeout", type=float, default=5400.0, help="stop a child that runs longer (s)")
    parser.add_argument("--threads", type=int, default=2, help="BM25 indexing and search threads")
    parser.add_argument("--java-heap", default="4g")
    parser.add_argument("--ce-backend", default="pyserini", help="BM25 engine of the ce_negatives stage")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median seconds, max RSS)")
    parser.add_argument("--repeat-stages", default="", help="only these stages are repeated (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="records (default <work>/scale.json; NAME.partial.json as it goes)")
    parser.add_argument("--markdown", type=Path, help="write the tables here too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    if args.report_from:
        records = []
        for path in args.report_from.split(","):
            data = json.loads(Path(path).read_text())
            records += data["records"] if isinstance(data, dict) else data
        present = [s for s in SIZES if any(r["size"] == s for r in records)]
        stages = [s for s in _stages() if any(r["stage"] == s.name for r in records)]
        tables, summaries = report(stages, records, present)
        text = f"{tables}\n\n{before_after(records, present)}\n"
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        _verdict(summaries, records)
        return

    sizes = [s for s in args.sizes.split(",") if s]
    before_sizes = set(filter(None, args.before_sizes.split(",")))
    unknown = [s for s in sizes + sorted(before_sizes) if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}: choose from {', '.join(SIZES)}")
    stages = _stages()
    if args.stages:
        wanted = args.stages.split(",")
        missing = [w for w in wanted if w not in {s.name for s in stages}]
        if missing:
            raise SystemExit(f"unknown stages {missing}: {', '.join(s.name for s in stages)}")
        by_name = {s.name: s for s in stages}
        stages = [by_name[w] for w in wanted]  # in the order given
    variants = set(args.variants.split(","))
    repeat_only = set(filter(None, args.repeat_stages.split(",")))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base_ctx = {
        "work": str(work),
        "seed": args.seed,
        "threads": args.threads,
        "java_heap": args.java_heap,
        "ce_backend": args.ce_backend,
    }
    limit = args.max_rss_gib * 1024
    started = time.perf_counter()
    loads = [os.getloadavg()]
    print(f"CPU: {_cpu_name()}, {os.cpu_count()} cores; load average " + " ".join(f"{v:.2f}" for v in loads[0]))
    print(f"busiest processes at the start:\n{_others()}\n", flush=True)
    records: list[dict] = []
    partial = (args.json or work / "scale.json").with_suffix(".partial.json")
    for size in sizes:
        prep = run_child(
            {**base_ctx, "stage": "prepare", "variant": "after", "size": size},
            limit,
            args.timeout,
            work / "logs" / f"prepare-{size}.log",
        )
        if not prep["ok"]:
            raise SystemExit(f"preparing {size} failed: {prep['error']}")
        print(
            f"[{size}] data ready ({prep['counts']['passages']:,} passages, {prep['counts']['pairs']:,} pairs)",
            flush=True,
        )
        for stage in stages:
            for variant in stage.variants:
                if variant not in variants:
                    continue
                runs = args.repeat if (not repeat_only or stage.name in repeat_only) else 1
                spec = {**base_ctx, "stage": stage.name, "variant": variant, "size": size}
                if variant == "before" and stage.before_sizes is not None and size not in stage.before_sizes:
                    records.append({"ok": False, "error": stage.before_skip, **spec})
                    print(f"[{size}] {stage.name} {variant}: {stage.before_skip}", flush=True)
                    continue
                if variant == "before" and before_sizes and size not in before_sizes:
                    records.append({"ok": False, "error": "not run (--before-sizes)", **spec})
                    continue
                tries = []
                for i in range(runs):
                    log = work / "logs" / f"{stage.name}-{variant}-{size}-{i}.log"
                    tries.append(run_child(spec, limit, args.timeout, log))
                    loads.append(os.getloadavg())
                rec = _merge(tries)
                rec.update(stage=stage.name, variant=variant, size=size)
                records.append(rec)
                partial.write_text(json.dumps(records, indent=1, default=str))  # survives an interrupted run
                total = sum(rec["steps"].values()) if rec["ok"] else None
                what = f"{total:.1f} s, peak {_fmt_mib(rec['peak_mib'])}" if rec["ok"] else rec["error"]
                print(f"[{size}] {stage.name} {variant}: {what} (load {rec['load_before']:.1f})", flush=True)
    elapsed = time.perf_counter() - started
    tables, summaries = report(stages, records, sizes)
    ba = before_after(records, sizes)
    one = [v[0] for v in loads]
    footer = (
        f"Total benchmark time: {_fmt_s(elapsed)}. Load average (1 min) during the run: min {min(one):.1f}, "
        f"mean {statistics.fmean(one):.1f}, max {max(one):.1f}. CPU: {_cpu_name()}, {os.cpu_count()} cores."
    )
    text = f"{tables}\n\n{ba}\n\n{footer}\n"
    print("\n" + text)
    print(f"busiest processes at the end:\n{_others()}")
    json_path = args.json or work / "scale.json"
    json_path.write_text(
        json.dumps(
            {
                "records": records,
                "summaries": [s.__dict__ for s in summaries],
                "seconds": elapsed,
                "loads": loads,
                "cpu": _cpu_name(),
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
            default=str,
        )
    )
    if args.markdown:
        args.markdown.write_text(text)
    _verdict(summaries, records)


def _verdict(summaries: list[Summary], records: list[dict]) -> None:
    """The goals of issue 17 for the `after` variants: exponents <= 1.2, paper peak <= 32 GB, no failure."""
    bad = [
        (s.stage, s.variant, k, v["exponent"])
        for s in summaries
        if s.variant == "after"
        for k, v in s.steps.items()
        if v["asserted"] and v["exponent"] is not None and v["exponent"] > 1.2
    ]
    over = [
        (s.stage, s.variant, s.rss["paper_mib"])
        for s in summaries
        if s.variant == "after" and (s.rss["paper_mib"] or 0) > 32 * 1024
    ]
    failed = [r for r in records if not r["ok"] and r["variant"] == "after"]
    print(f"after: {len(bad)} steps with exponent > 1.2 {bad}")
    print(f"after: {len(over)} stages over 32 GB at paper scale {over}; {len(failed)} measurements failed")


def _merge(tries: list[dict]) -> dict:
    """Median seconds per step and the largest peak over repeated runs of one measurement."""
    ok = [t for t in tries if t["ok"]]
    if not ok:
        return tries[-1]
    rec = dict(ok[0])
    if len(ok) > 1:
        rec["steps"] = {k: statistics.median(t["steps"][k] for t in ok) for k in ok[0]["steps"]}
        for key in ("rss_self_mib", "rss_children_mib", "peak_mib"):
            rec[key] = max(t[key] for t in ok)
        totals = [sum(t["steps"].values()) for t in ok]
        rec["repeats_note"] = f"median of {len(ok)} (totals {', '.join(f'{x:.1f}' for x in totals)})"
    return rec


if __name__ == "__main__":
    main()
