"""Negative sets written by the tests, in the shared contract (`lib.mining.negatives.NEGATIVES_SCHEMA`).

The mining and generation stages write these files in production; the training tests write their own
from the training pairs, so that they do not depend on those stages: mined sets take corpus documents
of other topics, LLM sets are written sentences. Coverage differs on purpose (a generator that skips
some pairs and writes fewer than 5 negatives for others), as small LLMs do.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl

from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA


def _rows(pair: dict, negatives: list[tuple[str | None, str]], source: str) -> list[dict]:
    return [
        {
            "query_id": pair["query_id"],
            "positive_id": pair["positive_id"],
            "query": pair["query"],
            "positive": pair["positive"],
            "negative_rank": rank,
            "negative_id": neg_id,
            "negative": text,
            "score": None if neg_id is None else float(10 - rank),
            "source": source,
        }
        for rank, (neg_id, text) in enumerate(negatives, 1)
    ]


def write_negative_sets(
    profile_root: Path,
    generators: list[str],
    *,
    seed: int = 0,
    skip_pairs: dict[str, int] | None = None,
    short_pairs: dict[str, int] | None = None,
) -> dict[str, pl.DataFrame]:
    """Write `bm25`, `ce` and one LLM set per generator where their assets would.

    Args:
        profile_root: `<data root>/<profile>` (holds `training_pairs/`).
        generators: Generator keys; each gets `llm_negatives/<g>/negatives.parquet`.
        seed: Seed of the choices.
        skip_pairs: Per generator, how many pairs (the last ones) it has no negative for.
        short_pairs: Per generator, how many pairs (the first ones) get only 2 negatives.

    Returns:
        The sets by source name.
    """
    rng = random.Random(seed)
    pairs = pl.read_parquet(profile_root / "training_pairs" / "pairs.parquet").to_dicts()
    corpus = pl.read_parquet(profile_root / "training_pairs" / "corpus.parquet")
    docs = [(d, f"{t} {x}".strip()) for d, t, x in corpus.select("doc_id", "title", "text").iter_rows()]
    sets: dict[str, list[dict]] = {"bm25": [], "ce": []}
    for pair in pairs:
        topic = pair["positive_id"].split("-")[0]
        others = [d for d in docs if d[0].split("-")[0] != topic]
        sets["bm25"] += _rows(pair, rng.sample(others, 5), "bm25")
        sets["ce"] += _rows(pair, rng.sample(others, 5), "ce")
    for g in generators:
        source = f"llm-{g}"
        sets[source] = []
        skip = (skip_pairs or {}).get(g, 0)
        short = (short_pairs or {}).get(g, 0)
        for i, pair in enumerate(pairs[: len(pairs) - skip]):
            n = 2 if i < short else 5
            written = [
                (None, f"{g} wrote passage {k} about {pair['query'][:30]} and unrelated matters") for k in range(n)
            ]
            sets[source] += _rows(pair, written, source)
    frames = {name: pl.DataFrame(rows, schema=NEGATIVES_SCHEMA) for name, rows in sets.items()}
    for name, frame in frames.items():
        if name == "bm25":
            folder = profile_root / "bm25_negatives"
        elif name == "ce":
            folder = profile_root / "ce_negatives"
        else:
            folder = profile_root / "llm_negatives" / name.removeprefix("llm-")
        folder.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(folder / "negatives.parquet")
    return frames


def single_torch_thread():
    """Run torch on one thread for the duration of a test module, then restore the setting.

    Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP threads that
    wait for each other make each step an order of magnitude slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
