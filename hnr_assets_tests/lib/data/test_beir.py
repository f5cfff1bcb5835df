"""BEIR readers and validators: good input round-trips, each malformed input has its own clear error."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from hnr_assets.lib.data.beir import (
    convert_beir_split,
    iter_corpus,
    load_corpus,
    load_qrels,
    load_queries,
    passage_text,
    read_corpus,
    read_qrels,
    read_queries,
    validate_stored_split,
)
from hnr_assets.lib.runtime.errors import DataValidationError
from hnr_assets.lib.data.pairs import passage_expr
from hnr_assets_tests.fixtures import make_tiny_dataset, write_beir

CORPUS = [
    {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces fever."},
    {"_id": "d2", "title": "", "text": "Statins lower cholesterol."},
    {"_id": "d3", "text": "No title here."},
]
QUERIES = [{"_id": "q1", "text": "does aspirin reduce fever"}, {"_id": "q2", "text": "statins"}]
QRELS = {"test": [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d3", 0)]}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "good", CORPUS, QUERIES, QRELS)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _set_line(path: Path, lineno: int, content: str | bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[lineno - 1] = content if isinstance(content, bytes) else content.encode()
    path.write_bytes(b"".join(lines))


def test_round_trip_in_beir_shapes(good: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stats = convert_beir_split(good, "test", out)
    assert (stats.documents, stats.queries, stats.judgements, stats.relevant_judgements) == (3, 2, 3, 2)
    assert load_corpus(out / "corpus.parquet")["d3"] == {"title": "", "text": "No title here."}
    assert load_queries(out / "queries.parquet") == {"q1": "does aspirin reduce fever", "q2": "statins"}
    assert load_qrels(out / "qrels.parquet") == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
    assert validate_stored_split(out) == []


def test_queries_are_restricted_to_the_split(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "ds", CORPUS, [*QUERIES, {"_id": "q9", "text": "unjudged"}], QRELS)
    out = tmp_path / "out"
    out.mkdir()
    convert_beir_split(folder, "test", out)
    assert set(load_queries(out / "queries.parquet")) == {"q1", "q2"}


def test_tolerated_variants(tmp_path: Path) -> None:
    """A UTF-8 BOM, CRLF line ends, blank lines, integer ids and a null title are all fine."""
    folder = write_beir(tmp_path / "ds", CORPUS, QUERIES, QRELS)
    corpus = folder / "corpus.jsonl"
    corpus.write_bytes(
        b"\xef\xbb\xbf"
        + b'{"_id": 7, "title": null, "text": "int id"}\r\n\n'
        + corpus.read_bytes().replace(b"\n", b"\r\n")
    )
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_bytes(qrels.read_bytes().replace(b"\n", b"\r\n") + b"\r\n")
    docs = read_corpus(corpus)
    assert docs["7"] == {"title": "", "text": "int id"}
    assert len(read_qrels(qrels)) == 3


def test_passage_text_python_and_polars_agree() -> None:
    rows = [("T", "body"), ("", "body "), ("  T  ", " body"), (None, "x"), ("T", "")]
    df = pl.DataFrame({"title": [r[0] for r in rows], "text": [r[1] for r in rows]})
    assert df.select(passage_expr()).to_series().to_list() == [passage_text(t, x) for t, x in rows]


# --- malformed input: one case per problem, each asserting file, line and wording -----------------

CORPUS_CASES = [
    ("truncated JSON", 2, '{"_id": "d2", "title": "", "te\n', "invalid JSON"),
    ("not an object", 2, '["d2", "text"]\n', "expected a JSON object, got list"),
    ("missing _id", 2, '{"title": "x", "text": "y"}\n', "missing '_id'"),
    ("empty _id", 2, '{"_id": " ", "text": "y"}\n', "empty '_id'"),
    ("non-string _id", 2, '{"_id": ["d"], "text": "y"}\n', "'_id' must be a string, got list"),
    ("_id with a tab", 2, '{"_id": "d\\t2", "text": "y"}\n', "contains a tab or line break"),
    ("missing text", 2, '{"_id": "d2", "title": "x"}\n', "missing 'text'"),
    ("non-string text", 2, '{"_id": "d2", "text": 42}\n', "'text' must be a string, got int"),
    ("non-string title", 2, '{"_id": "d2", "title": 1, "text": "y"}\n', "'title' must be a string, got int"),
    ("duplicate _id", 3, '{"_id": "d1", "text": "again"}\n', "duplicate '_id' 'd1' (first on line 1)"),
]


@pytest.mark.parametrize(("case", "line", "content", "message"), CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_malformed_corpus(good: Path, case: str, line: int, content: str, message: str) -> None:
    path = good / "corpus.jsonl"
    _set_line(path, line, content)
    with pytest.raises(DataValidationError) as err:
        list(iter_corpus(path))
    assert err.value.line == line
    assert err.value.path.name == "corpus.jsonl"
    assert f"corpus.jsonl:{line}: " in str(err.value)
    assert message in str(err.value)


def test_undecodable_bytes(good: Path) -> None:
    path = good / "corpus.jsonl"
    _set_line(path, 2, b'{"_id": "d2", "text": "caf\xe9"}\n')
    with pytest.raises(DataValidationError, match=r"corpus\.jsonl:2: undecodable bytes \(not UTF-8\) at byte 26"):
        list(iter_corpus(path))


def test_empty_corpus(good: Path) -> None:
    (good / "corpus.jsonl").write_text("\n\n")
    with pytest.raises(DataValidationError, match=r"corpus\.jsonl: empty corpus: no documents"):
        read_corpus(good / "corpus.jsonl")
    out = good / "out"
    out.mkdir()
    with pytest.raises(DataValidationError, match="empty corpus"):
        convert_beir_split(good, "test", out)


QUERY_CASES = [
    ("empty query text", 2, '{"_id": "q2", "text": "  "}\n', "query 'q2' has an empty 'text'"),
    ("missing query text", 1, '{"_id": "q1"}\n', "missing 'text'"),
    ("duplicate query id", 2, '{"_id": "q1", "text": "again"}\n', "duplicate '_id' 'q1' (first on line 1)"),
]


@pytest.mark.parametrize(("case", "line", "content", "message"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_malformed_queries(good: Path, case: str, line: int, content: str, message: str) -> None:
    path = good / "queries.jsonl"
    _set_line(path, line, content)
    with pytest.raises(DataValidationError, match=rf"queries\.jsonl:{line}: ") as err:
        read_queries(path)
    assert message in str(err.value)


QRELS_CASES = [
    ("missing header", 1, "q1\td1\t1\n", "expected the header 'query-id<TAB>corpus-id<TAB>score'"),
    ("wrong header", 1, "qid\tdocid\trel\n", "expected the header"),
    ("two columns", 2, "q1\td1\n", "expected 3 tab-separated columns, got 2"),
    ("space separated", 2, "q1 d1 1\n", "expected 3 tab-separated columns, got 1"),
    ("four columns", 2, "q1\t0\td1\t1\n", "expected 3 tab-separated columns, got 4"),
    ("non-integer grade", 2, "q1\td1\t1.5\n", "score '1.5' is not an integer relevance grade"),
    ("text grade", 2, "q1\td1\trelevant\n", "score 'relevant' is not an integer"),
    ("empty id", 2, "\td1\t1\n", "empty query-id or corpus-id"),
    ("duplicate judgement", 3, "q1\td1\t2\n", "duplicate judgement for query 'q1' and document 'd1' (first on line 2)"),
]


@pytest.mark.parametrize(("case", "line", "content", "message"), QRELS_CASES, ids=[c[0] for c in QRELS_CASES])
def test_malformed_qrels(good: Path, case: str, line: int, content: str, message: str) -> None:
    path = good / "qrels" / "test.tsv"
    _set_line(path, line, content)
    with pytest.raises(DataValidationError, match=rf"test\.tsv:{line}: ") as err:
        read_qrels(path)
    assert message in str(err.value)


def test_qrels_without_judgements(good: Path) -> None:
    (good / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataValidationError, match=r"test\.tsv: no judgements"):
        read_qrels(good / "qrels" / "test.tsv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("q404\td1\t1\n", "query-id 'q404' is not in queries.jsonl"),
        ("q1\td404\t1\n", "corpus-id 'd404' is not in corpus.jsonl"),
    ],
    ids=["unknown query", "unknown document"],
)
def test_qrels_referencing_unknown_ids(good: Path, tmp_path: Path, row: str, message: str) -> None:
    path = good / "qrels" / "test.tsv"
    path.write_text(path.read_text() + row)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataValidationError, match=r"test\.tsv:5: ") as err:
        convert_beir_split(good, "test", out)
    assert message in str(err.value)


def test_missing_split_file(good: Path, tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"qrels/dev\.tsv: missing file"):
        convert_beir_split(good, "dev", tmp_path)


def test_stored_contract_catches_corruption(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    make_tiny_dataset(folder)
    out = tmp_path / "out"
    out.mkdir()
    convert_beir_split(folder, "test", out)
    assert validate_stored_split(out) == []
    qrels = pl.read_parquet(out / "qrels.parquet")
    pl.concat([qrels, qrels.head(1).with_columns(pl.lit("ghost").alias("doc_id"))]).write_parquet(out / "qrels.parquet")
    corpus = pl.read_parquet(out / "corpus.parquet")
    pl.concat([corpus, corpus.head(1)]).write_parquet(out / "corpus.parquet")
    problems = validate_stored_split(out)
    assert "corpus.parquet: 1 duplicate doc_id" in problems
    assert "qrels.parquet: 1 judgements reference unknown documents" in problems
    (out / "queries.parquet").unlink()
    assert validate_stored_split(out) == ["queries.parquet: missing"]


def test_json_fixture_is_real_jsonl(tmp_path: Path) -> None:
    counts = make_tiny_dataset(tmp_path / "t")
    lines = (tmp_path / "t" / "corpus.jsonl").read_text().splitlines()
    assert len(lines) == counts["documents"]
    assert all(json.loads(line)["_id"] for line in lines)
