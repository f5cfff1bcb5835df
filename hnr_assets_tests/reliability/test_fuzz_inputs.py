"""Fuzzing with Hypothesis: readers, validators and the profile loader raise only hnr's own clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hnr_assets.lib.data.beir import read_corpus, read_qrels, read_queries
from hnr_assets.lib.runtime.errors import DataValidationError
from hnr_assets.profiles import ProfileError, load_profile

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
records = st.dictionaries(st.sampled_from(["_id", "title", "text", "metadata", "x"]), json_values, max_size=4)


def _jsonl_line(draw_value) -> bytes:
    return (json.dumps(draw_value) + "\n").encode()


raw_lines = st.one_of(
    records.map(_jsonl_line),
    st.binary(max_size=40).map(lambda b: b + b"\n"),
    st.text(max_size=40).map(lambda t: (t.replace("\n", " ") + "\n").encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(lines=st.lists(raw_lines, max_size=12))
def test_corpus_and_queries_readers_raise_only_clear_errors(tmp_path_factory, lines: list[bytes]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "corpus.jsonl"
    path.write_bytes(b"".join(lines))
    for reader in (read_corpus, read_queries):
        try:
            result = reader(path)
        except DataValidationError as exc:
            assert str(exc).startswith(str(path))
            assert exc.problem
        else:
            assert result  # success means at least one valid record
            assert all(isinstance(k, str) and k.strip() for k in result)


qrels_cells = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8)
qrels_rows = st.lists(st.lists(qrels_cells, min_size=0, max_size=5).map("\t".join), max_size=10)


@FUZZ
@given(header=st.booleans(), rows=qrels_rows, noise=st.binary(max_size=10))
def test_qrels_reader_raises_only_clear_errors(tmp_path_factory, header: bool, rows: list[str], noise: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "test.tsv"
    text = ("query-id\tcorpus-id\tscore\n" if header else "") + "\n".join(rows)
    path.write_bytes(text.encode("utf-8", "surrogatepass") + noise)
    try:
        judgements = read_qrels(path)
    except DataValidationError as exc:
        assert str(exc).startswith(str(path))
    else:
        assert judgements and all(isinstance(j.grade, int) and j.query_id and j.doc_id for j in judgements)


profile_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["name", "datasets", "training_pairs", "dataset", "split", "max_pairs", "generators", "key", "x"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@FUZZ
@given(data=profile_values)
def test_profile_loader_raises_only_profile_errors(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_profile(path)
    except ProfileError as exc:
        assert str(exc).startswith(str(path))


@FUZZ
@given(text=st.text(max_size=200))
def test_profile_loader_on_arbitrary_text(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with pytest.raises(ProfileError):
        load_profile(path)


def test_profile_loader_refuses_python_tags(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ProfileError, match="invalid YAML"):
        load_profile(path)
