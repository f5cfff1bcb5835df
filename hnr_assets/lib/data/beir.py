"""BEIR-layout readers and validators.

A BEIR dataset folder holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
`qrels/<split>.tsv` (`query-id<TAB>corpus-id<TAB>score`, with that header). Everything is validated while it
is read; the first problem raises `DataValidationError` naming the file, the line and what is wrong.

In memory the shapes are BEIR's (beir `retrieval/search/base.py`): corpus `{doc_id: {"title", "text"}}`,
queries `{qid: text}`, qrels `{qid: {doc_id: grade}}`. On disk they are Parquet files with the columns of
`CORPUS_SCHEMA`, `QUERIES_SCHEMA` and `QRELS_SCHEMA`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hnr_assets.lib.runtime.errors import DataValidationError

CORPUS_SCHEMA = {"doc_id": pl.String, "title": pl.String, "text": pl.String}
QUERIES_SCHEMA = {"query_id": pl.String, "text": pl.String}
QRELS_SCHEMA = {"query_id": pl.String, "doc_id": pl.String, "grade": pl.Int32}
QRELS_HEADER = ("query-id", "corpus-id", "score")

_BOM = b"\xef\xbb\xbf"
_INT = re.compile(r"^[+-]?\d+$")
_ARROW_CORPUS = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])


def passage_text(title: str | None, text: str) -> str:
    """The text of a document as every stage sees it: `title + " " + text` (BEIR's convention)."""
    title = (title or "").strip()
    return f"{title} {text}".strip() if title else text.strip()


# --------------------------------------------------------------------------------------------- JSONL


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line of a JSON-lines file.

    Raises:
        DataValidationError: Undecodable bytes, invalid JSON, or a line that is not a JSON object.
    """
    path = Path(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataValidationError(
                    path, f"undecodable bytes (not UTF-8) at byte {exc.start} of the line", lineno
                ) from None
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DataValidationError(path, f"invalid JSON: {exc}", lineno) from None
            if not isinstance(obj, dict):
                raise DataValidationError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
            yield lineno, obj


def _record_id(path: Path, lineno: int, obj: dict[str, Any]) -> str:
    if "_id" not in obj:
        raise DataValidationError(path, "missing '_id'", lineno)
    raw = obj["_id"]
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise DataValidationError(path, f"'_id' must be a string, got {type(raw).__name__}", lineno)
    value = str(raw)
    if not value.strip():
        raise DataValidationError(path, "empty '_id'", lineno)
    if any(ch in value for ch in "\t\r\n"):
        raise DataValidationError(path, f"'_id' {value!r} contains a tab or line break", lineno)
    return value


def _record_text(path: Path, lineno: int, obj: dict[str, Any], key: str, required: bool) -> str:
    if key not in obj:
        if required:
            raise DataValidationError(path, f"missing '{key}'", lineno)
        return ""
    value = obj[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataValidationError(path, f"'{key}' must be a string, got {type(value).__name__}", lineno)
    return value


def _first_line_of(path: Path, record_id: str, before: int) -> int | None:
    """Line of the first record with `record_id` (only used to word a duplicate-id error)."""
    for lineno, obj in iter_jsonl(path):
        if lineno >= before:
            return None
        if str(obj.get("_id")) == record_id:
            return lineno
    return None


def _duplicate(path: Path, record_id: str, lineno: int) -> DataValidationError:
    first = _first_line_of(path, record_id, lineno)
    where = f" (first on line {first})" if first else ""
    return DataValidationError(path, f"duplicate '_id' {record_id!r}{where}", lineno)


def iter_corpus(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """Yield `(line, doc_id, title, text)` for each document of a `corpus.jsonl`, validated.

    A document needs `_id` and `text` (a string, possibly empty: some collections have empty
    documents); `title` is optional. Ids must be unique.
    """
    path = Path(path)
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        doc_id = _record_id(path, lineno, obj)
        text = _record_text(path, lineno, obj, "text", required=True)
        title = _record_text(path, lineno, obj, "title", required=False)
        if doc_id in seen:
            raise _duplicate(path, doc_id, lineno)
        seen.add(doc_id)
        yield lineno, doc_id, title, text


def read_queries(path: Path) -> dict[str, str]:
    """Read `queries.jsonl` into `{qid: text}`; every query needs a non-blank `text`."""
    path = Path(path)
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        qid = _record_id(path, lineno, obj)
        text = _record_text(path, lineno, obj, "text", required=True)
        if not text.strip():
            raise DataValidationError(path, f"query {qid!r} has an empty 'text'", lineno)
        if qid in queries:
            raise DataValidationError(path, f"duplicate '_id' {qid!r} (first on line {lines[qid]})", lineno)
        queries[qid] = text
        lines[qid] = lineno
    if not queries:
        raise DataValidationError(path, "no queries")
    return queries


def read_corpus(path: Path) -> dict[str, dict[str, str]]:
    """Read `corpus.jsonl` into BEIR's `{doc_id: {"title", "text"}}` (small corpora; see `write_corpus_parquet`)."""
    corpus = {doc_id: {"title": title, "text": text} for _, doc_id, title, text in iter_corpus(path)}
    if not corpus:
        raise DataValidationError(path, "empty corpus: no documents")
    return corpus


# --------------------------------------------------------------------------------------------- qrels


@dataclass(frozen=True)
class Judgement:
    line: int
    query_id: str
    doc_id: str
    grade: int


def read_qrels(path: Path) -> list[Judgement]:
    """Read a BEIR qrels TSV (header `query-id<TAB>corpus-id<TAB>score`), validated.

    Raises:
        DataValidationError: Missing or wrong header, a line without exactly 3 tab-separated columns,
            an empty id, a grade that is not an integer, a repeated (query, document) pair, or no
            judgement at all.
    """
    path = Path(path)
    judgements: list[Judgement] = []
    seen: dict[tuple[str, str], int] = {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise DataValidationError(
                    path, f"undecodable bytes (not UTF-8) at byte {exc.start} of the line", lineno
                ) from None
            if lineno == 1:
                header = tuple(col.strip() for col in line.split("\t"))
                if header != QRELS_HEADER:
                    raise DataValidationError(
                        path,
                        f"expected the header 'query-id<TAB>corpus-id<TAB>score', got {line[:80]!r}",
                        lineno,
                    )
                continue
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataValidationError(
                    path, f"expected 3 tab-separated columns, got {len(cols)}: {line[:80]!r}", lineno
                )
            qid, doc_id, grade_raw = (c.strip() for c in cols)
            if not qid or not doc_id:
                raise DataValidationError(path, "empty query-id or corpus-id", lineno)
            if not _INT.match(grade_raw):
                raise DataValidationError(path, f"score {grade_raw!r} is not an integer relevance grade", lineno)
            key = (qid, doc_id)
            if key in seen:
                raise DataValidationError(
                    path,
                    f"duplicate judgement for query {qid!r} and document {doc_id!r} (first on line {seen[key]})",
                    lineno,
                )
            seen[key] = lineno
            judgements.append(Judgement(lineno, qid, doc_id, int(grade_raw)))
    if not judgements:
        raise DataValidationError(path, "no judgements")
    return judgements


# ------------------------------------------------------------------------------------ whole dataset


@dataclass
class SplitStats:
    """What `convert_beir_split` read and wrote."""

    documents: int = 0
    empty_documents: int = 0
    queries: int = 0
    judgements: int = 0
    relevant_judgements: int = 0
    files: dict[str, Path] = field(default_factory=dict)


def dataset_files(folder: Path, split: str) -> dict[str, Path]:
    """The three files of a BEIR folder for one split; raises if one is missing."""
    folder = Path(folder)
    files = {
        "corpus": folder / "corpus.jsonl",
        "queries": folder / "queries.jsonl",
        "qrels": folder / "qrels" / f"{split}.tsv",
    }
    for path in files.values():
        if not path.is_file():
            raise DataValidationError(path, "missing file (not a BEIR dataset folder for this split?)")
    return files


def write_corpus_parquet(src: Path, dst: Path, batch_size: int = 50_000) -> tuple[set[str], int]:
    """Stream a validated `corpus.jsonl` into a Parquet file without holding the corpus in memory.

    Returns:
        The set of document ids and the number of empty documents (blank title and text).
    """
    ids: set[str] = set()
    empty = 0
    cols: dict[str, list[str]] = {"doc_id": [], "title": [], "text": []}
    with pq.ParquetWriter(dst, _ARROW_CORPUS, compression="zstd") as writer:
        for _, doc_id, title, text in iter_corpus(src):
            ids.add(doc_id)
            if not title.strip() and not text.strip():
                empty += 1
            cols["doc_id"].append(doc_id)
            cols["title"].append(title)
            cols["text"].append(text)
            if len(cols["doc_id"]) >= batch_size:
                writer.write_table(pa.Table.from_pydict(cols, schema=_ARROW_CORPUS))
                cols = {k: [] for k in cols}
        if cols["doc_id"] or not ids:
            writer.write_table(pa.Table.from_pydict(cols, schema=_ARROW_CORPUS))
    if not ids:
        raise DataValidationError(src, "empty corpus: no documents")
    return ids, empty


def convert_beir_split(folder: Path, split: str, out_dir: Path) -> SplitStats:
    """Validate one split of a BEIR folder and write `corpus`, `queries`, `qrels` Parquet files.

    Queries are restricted to those judged in the split. Every judgement must name a known query
    and a known document. `out_dir` should be a temporary folder (see `lib.runtime.io.atomic_dir`): on error
    the caller discards it, so nothing half-written is ever published.

    Args:
        folder: BEIR dataset folder.
        split: Qrels split, e.g. `test` or `train`.
        out_dir: Existing folder that receives `corpus.parquet`, `queries.parquet`, `qrels.parquet`.

    Returns:
        Counts and the written paths.
    """
    files = dataset_files(folder, split)
    judgements = read_qrels(files["qrels"])
    queries = read_queries(files["queries"])
    for j in judgements:
        if j.query_id not in queries:
            raise DataValidationError(
                files["qrels"], f"query-id {j.query_id!r} is not in {files['queries'].name}", j.line
            )

    corpus_out = Path(out_dir) / "corpus.parquet"
    doc_ids, empty = write_corpus_parquet(files["corpus"], corpus_out)
    for j in judgements:
        if j.doc_id not in doc_ids:
            raise DataValidationError(
                files["qrels"], f"corpus-id {j.doc_id!r} is not in {files['corpus'].name}", j.line
            )

    judged: dict[str, None] = dict.fromkeys(j.query_id for j in judgements)
    queries_df = pl.DataFrame({"query_id": list(judged), "text": [queries[q] for q in judged]}, schema=QUERIES_SCHEMA)
    qrels_df = pl.DataFrame(
        {
            "query_id": [j.query_id for j in judgements],
            "doc_id": [j.doc_id for j in judgements],
            "grade": [j.grade for j in judgements],
        },
        schema=QRELS_SCHEMA,
    )
    queries_df.write_parquet(Path(out_dir) / "queries.parquet", compression="zstd")
    qrels_df.write_parquet(Path(out_dir) / "qrels.parquet", compression="zstd")
    return SplitStats(
        documents=len(doc_ids),
        empty_documents=empty,
        queries=queries_df.height,
        judgements=qrels_df.height,
        relevant_judgements=int((qrels_df["grade"] > 0).sum()),
        files={name: Path(out_dir) / f"{name}.parquet" for name in ("corpus", "queries", "qrels")},
    )


# ------------------------------------------------------------------------ stored-output contract


def validate_stored_split(out_dir: Path) -> list[str]:
    """Check the contract of a stored split; returns a list of problems (empty when it holds).

    The same rules as the readers: unique non-empty ids, non-empty query text, integer grades,
    judgements that reference stored queries and documents, at least one document and judgement.
    """
    out_dir = Path(out_dir)
    problems: list[str] = []
    frames: dict[str, pl.DataFrame] = {}
    for name, schema in (("corpus", CORPUS_SCHEMA), ("queries", QUERIES_SCHEMA), ("qrels", QRELS_SCHEMA)):
        path = out_dir / f"{name}.parquet"
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        df = pl.read_parquet(path)
        if dict(df.schema) != schema:
            problems.append(f"{path.name}: schema {dict(df.schema)} differs from {schema}")
            continue
        frames[name] = df
    if problems:
        return problems
    corpus, queries, qrels = frames["corpus"], frames["queries"], frames["qrels"]
    if corpus.height == 0:
        problems.append("corpus.parquet: no documents")
    if qrels.height == 0:
        problems.append("qrels.parquet: no judgements")
    for name, df, key in (("corpus", corpus, "doc_id"), ("queries", queries, "query_id")):
        if df[key].null_count() or (df[key].str.strip_chars() == "").any():
            problems.append(f"{name}.parquet: null or empty {key}")
        dups = df.height - df[key].n_unique()
        if dups:
            problems.append(f"{name}.parquet: {dups} duplicate {key}")
    if corpus["text"].null_count():
        problems.append("corpus.parquet: null text")
    if queries["text"].null_count() or (queries["text"].str.strip_chars() == "").any():
        problems.append("queries.parquet: null or empty query text")
    if qrels.select(pl.struct("query_id", "doc_id").is_duplicated().any()).item():
        problems.append("qrels.parquet: duplicate (query_id, doc_id) judgements")
    if qrels["grade"].null_count():
        problems.append("qrels.parquet: null grade")
    unknown_q = qrels.join(queries, on="query_id", how="anti").height
    if unknown_q:
        problems.append(f"qrels.parquet: {unknown_q} judgements reference unknown queries")
    unknown_d = qrels.join(corpus.select("doc_id"), on="doc_id", how="anti").height
    if unknown_d:
        problems.append(f"qrels.parquet: {unknown_d} judgements reference unknown documents")
    unjudged = queries.join(qrels, on="query_id", how="anti").height
    if unjudged:
        problems.append(f"queries.parquet: {unjudged} queries have no judgement in this split")
    return problems


# ------------------------------------------------------------------------------- BEIR in-memory shapes


def load_corpus(path: Path) -> dict[str, dict[str, str]]:
    """A stored `corpus.parquet` as BEIR's `{doc_id: {"title", "text"}}`."""
    df = pl.read_parquet(path)
    return {
        doc_id: {"title": title, "text": text}
        for doc_id, title, text in df.select("doc_id", "title", "text").iter_rows()
    }


def load_queries(path: Path) -> dict[str, str]:
    """A stored `queries.parquet` as `{qid: text}`."""
    df = pl.read_parquet(path)
    return dict(df.select("query_id", "text").iter_rows())


def load_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A stored `qrels.parquet` as `{qid: {doc_id: grade}}`."""
    qrels: dict[str, dict[str, int]] = {}
    for qid, doc_id, grade in pl.read_parquet(path).select("query_id", "doc_id", "grade").iter_rows():
        qrels.setdefault(qid, {})[doc_id] = grade
    return qrels
