"""bm25s: eager sparse BM25 scoring in numpy, no JVM (the second engine beside Lucene).

Same analyzer as far as a regular expression can go: `\\w+` tokens, lower case, Lucene's 33 English
stopwords, PyStemmer's Porter stemmer.

References:
    Lù, BM25S: Orders of magnitude faster lexical search via eager sparse scoring, arXiv 2407.03618 (2024).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from hnr_assets.lib.retrieval.base import HITS_SCHEMA, BM25Config, BM25Engine, IndexHandle, Log, iter_passages
from hnr_assets.lib.runtime.errors import ConfigError

# Lucene's StandardTokenizer keeps one-character tokens; bm25s' default regex (\w\w+) drops them.
BM25S_SPLITTER = r"(?u)\b\w+\b"


# -------------------------------------------------------------------------------------------- bm25s


class Bm25sEngine(BM25Engine):
    """bm25s (eager sparse scoring in numpy): no JVM, fast on small and mid-sized corpora.

    Scores are precomputed at indexing time, so k1 and b are part of the index.
    """

    backend = "bm25s"

    def __init__(self, config: BM25Config) -> None:
        super().__init__(config)
        if config.stemmer == "krovetz":
            raise ConfigError("the Krovetz stemmer exists only in Lucene; use stemmer: porter or none with bm25s")
        if config.prebuilt_index:
            raise ConfigError("prebuilt indexes are Lucene indexes; set backend: pyserini to use one")

    def fingerprint(self) -> dict[str, object]:
        return {**super().fingerprint(), "k1": self.config.k1, "b": self.config.b}

    def _tokenizer(self):
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer("porter") if self.config.stemmer == "porter" else None
        return bm25s.tokenization.Tokenizer(
            lower=True,
            splitter=BM25S_SPLITTER,
            stopwords=[] if self.config.keep_stopwords else "en",
            stemmer=stemmer,
        )

    def _build(self, corpus_path: Path, index_dir: Path, scratch: Path, log: Log) -> dict[str, int]:
        import bm25s

        tokenizer = self._tokenizer()
        # Tokenised a batch at a time (ids are given in order of first appearance, so the vocabulary and
        # the index are the same as from one call): neither the corpus text nor a Python list of every
        # passage is ever held whole, only the token ids bm25s indexes (MS MARCO: ~6 GB less).
        ids: list[list[int]] = []
        doc_ids = []
        for batch in iter_passages(corpus_path):
            ids += tokenizer.tokenize(
                batch["contents"].to_list(), update_vocab=True, return_as="ids", show_progress=False
            )
            doc_ids.append(batch["id"])
        tokens = tokenizer.to_tokenized_tuple(ids)
        # bm25s gives a document without any token the single token "" (so that it can be indexed).
        empty_id = tokenizer.get_vocab_dict().get("")
        empty = sum(1 for row in tokens.ids if not row or row == [empty_id])
        retriever = bm25s.BM25(k1=self.config.k1, b=self.config.b, method="lucene")
        retriever.index(tokens, show_progress=False)
        index_dir.mkdir(parents=True)
        retriever.save(str(index_dir))
        tokenizer.save_vocab(str(index_dir))
        doc_frame = (
            pl.concat([d.to_frame("doc_id") for d in doc_ids])
            if doc_ids
            else pl.DataFrame(schema={"doc_id": pl.String})
        )
        doc_frame.write_parquet(index_dir / "doc_ids.parquet")
        log(f"bm25s: {len(tokenizer.get_vocab_dict())} terms")
        return {"documents": doc_frame.height, "empty": empty}

    def _search(self, index: IndexHandle, queries: pl.DataFrame, k: int, log: Log) -> pl.DataFrame:
        import bm25s
        import numpy as np

        folder = Path(index.location)
        retriever = bm25s.BM25.load(str(folder), mmap=True)
        tokenizer = self._tokenizer()
        tokenizer.load_vocab(str(folder))
        doc_ids = pl.read_parquet(folder / "doc_ids.parquet")["doc_id"].to_numpy()
        texts = queries["text"].to_list()
        ids = tokenizer.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
        # A query without a known term comes back as the "" token, which would match empty documents.
        empty_id = tokenizer.get_vocab_dict().get("")
        ids = [[t for t in q if t != empty_id] for q in ids]
        keep = [i for i, q in enumerate(ids) if q]
        if not keep:
            return pl.DataFrame(schema=HITS_SCHEMA)
        # Scores come from bm25s' eager index; the top k is chosen here among the matching documents only:
        # `retrieve` selects over every document with `np.argpartition(scores, -k)`, which takes ~30 ms a
        # query on a 100k corpus whose scores are mostly zeros (1-2 ms here): ~8 h for 100k queries on 1M.
        rows = [ids[i] for i in keep]
        if self.config.threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.config.threads) as pool:
                found = list(pool.map(lambda q: top_k_positive(retriever.get_scores_from_ids(q), k), rows))
        else:
            found = [top_k_positive(retriever.get_scores_from_ids(q), k) for q in rows]
        qids = queries["query_id"].to_numpy()[keep]
        sizes = np.fromiter((len(d) for d, _ in found), dtype=np.int64, count=len(found))
        hits = pl.DataFrame(
            {
                "query_id": np.repeat(qids, sizes),
                "doc_id": doc_ids[np.concatenate([d for d, _ in found])],
                "rank": np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in sizes]),
                "score": np.concatenate([s for _, s in found]).astype(np.float64),
            },
            schema=HITS_SCHEMA,
        )
        log(f"bm25s: {hits.height} hits for {len(keep)} queries (k={k})")
        return hits


def top_k_positive(scores, k: int):
    """Positions and scores of the `k` best positive scores, best first; ties by position (deterministic).

    Args:
        scores: One score per document (numpy array).
        k: Hits wanted.

    Returns:
        `(positions, scores)`, at most `k` each, only documents with a score above 0.
    """
    import numpy as np

    pos = np.flatnonzero(scores > 0)
    vals = scores[pos]
    if len(pos) > k:
        part = np.argpartition(-vals, k - 1)[:k]
        cut = vals[part].min()
        above = np.flatnonzero(vals > cut)
        tied = np.flatnonzero(vals == cut)[: k - len(above)]  # the first documents among equal scores
        pick = np.concatenate([above, tied])
        pos, vals = pos[pick], vals[pick]
    order = np.lexsort((pos, -vals))
    return pos[order], vals[order]
