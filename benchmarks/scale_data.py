"""Synthetic, seeded, MS MARCO-shaped data for `benchmarks/scale.py`.

Words are drawn from the vocabulary of the real collections in the dataset mirror (`HNR_DATASETS_DIR`,
default `../shared/datasets`) with their corpus frequencies (so function words, rare terms and BM25
postings have natural shapes). Passage and query lengths are drawn from those collections' own length
distributions, rescaled to MS MARCO passage's means (BEIR, Thakur et al. 2021, table 1: 55.98 words per
passage, 5.96 per query). As in BEIR's copy of MS MARCO, titles are empty and ids are numeric strings.

A query is written from its positive passage (two thirds of its words) plus random words, so BM25 finds
most positives near the top, as it does on MS MARCO; 5.9 % of the queries have a second positive
(532,751 pairs for 502,939 queries), and 2 % of the passages repeat another passage's text under a
new id (MS MARCO has such near-copies), which exercises the exclusion of positives by text and of
duplicate hits.

Everything depends only on (seed, size): the same call writes the same bytes.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MSMARCO_PASSAGE_WORDS = 55.98
MSMARCO_QUERY_WORDS = 5.96
SECOND_POSITIVE_SHARE = 532_751 / 502_939 - 1
DUPLICATE_PASSAGE_SHARE = 0.02
VOCAB_SOURCES = ("scifact", "cisi", "cranfield", "med")  # nfcorpus_preprocessed has its stop-words removed
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+")


def datasets_dir() -> Path:
    """The dataset mirror: `HNR_DATASETS_DIR`, else `../shared/datasets` next to the repository."""
    env = os.environ.get("HNR_DATASETS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


@dataclass(frozen=True)
class Language:
    """Word frequencies and length distributions learnt from the real collections."""

    words: np.ndarray  # object array of str
    cum: np.ndarray  # cumulative probabilities of `words`
    passage_lengths: np.ndarray  # rescaled word counts to draw from
    query_lengths: np.ndarray

    def draw_words(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.words[np.searchsorted(self.cum, rng.random(n), side="right").clip(0, len(self.words) - 1)]


def _lengths(counts: list[int], target_mean: float, lo: int) -> np.ndarray:
    arr = np.asarray(counts, dtype=np.float64)
    return np.maximum(lo, np.rint(arr * (target_mean / arr.mean()))).astype(np.int64)


def learn_language(folder: Path | None = None) -> Language:
    """Vocabulary and lengths of the collections in `VOCAB_SOURCES` (those present in the mirror)."""
    root = folder or datasets_dir()
    freq: Counter[str] = Counter()
    passage_counts: list[int] = []
    query_counts: list[int] = []
    found = []
    for name in VOCAB_SOURCES:
        corpus = root / name / "corpus.jsonl"
        if not corpus.is_file():
            continue
        found.append(name)
        with corpus.open(encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                tokens = _WORD.findall(f"{doc.get('title') or ''} {doc.get('text') or ''}")
                if tokens:
                    freq.update(t.lower() for t in tokens)
                    passage_counts.append(len(tokens))
        with (root / name / "queries.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                tokens = _WORD.findall(json.loads(line).get("text") or "")
                if tokens:
                    query_counts.append(len(tokens))
    if not found:
        raise SystemExit(f"no collection of {VOCAB_SOURCES} under {root}: set HNR_DATASETS_DIR")
    words, counts = zip(*sorted(freq.items(), key=lambda kv: (-kv[1], kv[0])), strict=True)
    p = np.asarray(counts, dtype=np.float64)
    return Language(
        words=np.asarray(words, dtype=object),
        cum=np.cumsum(p / p.sum()),
        passage_lengths=_lengths(passage_counts, MSMARCO_PASSAGE_WORDS, 3),
        query_lengths=_lengths(query_counts, MSMARCO_QUERY_WORDS, 2),
    )


def _sentences(tokens: np.ndarray, rng: np.random.Generator) -> str:
    """Words as prose: sentences of 8-20 words, capitalised, with a full stop."""
    out = []
    i = 0
    n = len(tokens)
    while i < n:
        j = min(n, i + int(rng.integers(8, 21)))
        sentence = " ".join(tokens[i:j])
        out.append(sentence[:1].upper() + sentence[1:] + ".")
        i = j
    return " ".join(out)


def write_collection(
    folder: Path, passages: int, queries: int, seed: int = 0, language: Language | None = None
) -> dict:
    """Write a BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv) of the given size.

    Returns:
        Counts (`passages`, `queries`, `pairs`, `duplicates`).
    """
    import orjson

    lang = language or learn_language()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    lengths = rng.choice(lang.passage_lengths, size=passages)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = lang.draw_words(rng, int(offsets[-1]))
    n_dup = int(passages * DUPLICATE_PASSAGE_SHARE)
    dup_of = dict(
        zip(
            rng.choice(passages, size=n_dup, replace=False).tolist(),
            rng.integers(0, passages, size=n_dup).tolist(),
            strict=True,
        )
    )
    texts: list[str] = []
    with (folder / "corpus.jsonl").open("wb") as fh:
        for i in range(passages):
            texts.append(_sentences(tokens[offsets[i] : offsets[i + 1]], rng))
        for i in range(passages):
            text = texts[dup_of[i]] if i in dup_of and dup_of[i] != i else texts[i]
            fh.write(orjson.dumps({"_id": str(i), "title": "", "text": text}) + b"\n")
    positives = rng.choice(passages, size=queries, replace=queries > passages)
    q_lengths = rng.choice(lang.query_lengths, size=queries)
    noise = lang.draw_words(rng, int(q_lengths.sum()))
    pairs = 0
    first_qid = 1_000_000_000  # MS MARCO's query ids are numbers of another range than passage ids
    with (folder / "queries.jsonl").open("wb") as qf, (folder / "qrels" / "train.tsv").open("w") as rf:
        rf.write("query-id\tcorpus-id\tscore\n")
        pos = 0
        for i in range(queries):
            doc = int(positives[i])
            n = int(q_lengths[i])
            own = tokens[offsets[doc] : offsets[doc + 1]]
            take = max(1, (2 * n) // 3)
            words = list(rng.choice(own, size=min(take, len(own)), replace=False)) + list(noise[pos : pos + n - take])
            pos += n
            rng.shuffle(words)
            qid = str(first_qid + i)
            qf.write(orjson.dumps({"_id": qid, "text": " ".join(words)}) + b"\n")
            rf.write(f"{qid}\t{doc}\t1\n")
            pairs += 1
            if rng.random() < SECOND_POSITIVE_SHARE:
                other = int(rng.integers(0, passages))
                if other != doc:
                    rf.write(f"{qid}\t{other}\t1\n")
                    pairs += 1
    counts = {"passages": passages, "queries": queries, "pairs": pairs, "duplicates": n_dup, "seed": seed}
    (folder / "counts.json").write_text(json.dumps(counts), encoding="utf-8")
    return counts


def llm_passages(lang: Language, rng: np.random.Generator, n: int) -> list[str]:
    """`n` passage-like texts (MS MARCO lengths) for canned LLM completions and synthetic negative sets."""
    lengths = rng.choice(lang.passage_lengths, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = lang.draw_words(rng, int(offsets[-1]))
    return [_sentences(tokens[offsets[i] : offsets[i + 1]], rng) for i in range(n)]
