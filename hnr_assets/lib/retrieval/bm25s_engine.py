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

        frame = pl.concat(list(iter_passages(corpus_path)))
        tokenizer = self._tokenizer()
        tokens = tokenizer.tokenize(frame["contents"].to_list(), return_as="tuple", show_progress=False)
        # bm25s gives a document without any token the single token "" (so that it can be indexed).
        empty_id = tokenizer.get_vocab_dict().get("")
        empty = sum(1 for ids in tokens.ids if not ids or ids == [empty_id])
        retriever = bm25s.BM25(k1=self.config.k1, b=self.config.b, method="lucene")
        retriever.index(tokens, show_progress=False)
        index_dir.mkdir(parents=True)
        retriever.save(str(index_dir))
        tokenizer.save_vocab(str(index_dir))
        frame.select(pl.col("id").alias("doc_id")).write_parquet(index_dir / "doc_ids.parquet")
        log(f"bm25s: {len(tokenizer.get_vocab_dict())} terms")
        return {"documents": frame.height, "empty": empty}

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
        k_eff = min(k, len(doc_ids))
        docs, scores = retriever.retrieve(
            [ids[i] for i in keep],
            k=k_eff,
            show_progress=False,
            n_threads=self.config.threads if self.config.threads > 1 else 0,
        )
        qids = queries["query_id"].to_numpy()[keep]
        hits = pl.DataFrame(
            {
                "query_id": np.repeat(qids, k_eff),
                "doc_id": doc_ids[docs.reshape(-1)],
                "rank": np.tile(np.arange(1, k_eff + 1, dtype=np.int32), len(keep)),
                "score": scores.reshape(-1).astype(np.float64),
            },
            schema=HITS_SCHEMA,
        )
        hits = hits.filter(pl.col("score") > 0)  # bm25s pads with non-matching documents
        log(f"bm25s: {hits.height} hits for {len(keep)} queries (k={k})")
        return hits
