"""The negative-set contract."""

from __future__ import annotations

import polars as pl

from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA, coverage, normalize_text, text_hash, validate_negatives


def _rows(
    negatives: list[tuple[str | None, str]], query_id: str = "q1", positive: str = "The positive passage."
) -> list[dict]:
    return [
        {
            "query_id": query_id,
            "positive_id": "p1",
            "query": "what?",
            "positive": positive,
            "negative_rank": rank,
            "negative_id": neg_id,
            "negative": text,
            "score": None,
            "source": "bm25",
        }
        for rank, (neg_id, text) in enumerate(negatives, 1)
    ]


def _df(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=NEGATIVES_SCHEMA)


def test_sound_set_has_no_problems() -> None:
    df = _df(_rows([("d1", "one"), ("d2", "two"), (None, "three")]))
    assert all(not v for v in validate_negatives(df).values())


def test_negative_equal_to_positive_by_id_and_by_text() -> None:
    df = _df(_rows([("p1", "other text"), ("d9", "  the POSITIVE passage ")]))
    problems = validate_negatives(df)["not_positive"]
    assert problems == ["1 negatives have their positive's id", "1 negatives have their positive's text"]


def test_duplicates_within_a_pair() -> None:
    df = _df(_rows([("d1", "Same text."), ("d2", "same text"), ("d1", "x")]))
    problems = validate_negatives(df)["distinct"]
    assert "2 rows repeat another negative of the same pair (normalised text)" in problems
    assert "2 rows repeat another negative id of the same pair" in problems


def test_same_negative_in_two_pairs_is_fine() -> None:
    df = _df(_rows([("d1", "one")], query_id="q1") + _rows([("d1", "one")], query_id="q2"))
    assert validate_negatives(df)["distinct"] == []


def test_rank_gaps_and_schema() -> None:
    rows = _rows([("d1", "one"), ("d2", "two")])
    rows[1]["negative_rank"] = 3
    assert validate_negatives(_df(rows))["ranks"] == ["1 pairs have ranks that are not 1..n (n <= 5)"]
    assert validate_negatives(pl.DataFrame({"x": [1]}))["schema"][0].startswith("schema ")


def test_coverage() -> None:
    df = _df(_rows([(f"d{i}", f"n{i}") for i in range(5)], "q1") + _rows([("d1", "n")], "q2"))
    pairs = pl.DataFrame({"query_id": ["q1", "q2", "q3"], "positive_id": ["p1", "p1", "p1"]})
    assert coverage(df, pairs) == {"pairs": 3, "full": 1, "partial": 1, "none": 1, "full_share": 1 / 3}


def test_normalisation() -> None:
    assert normalize_text("  Héllo,   WORLD! ") == "héllo world"
    assert text_hash("Hello, world") == text_hash("hello world")


def test_false_negative_rules() -> None:
    import pytest

    from hnr_assets.lib.mining.ce_filter import false_negative_mask
    from hnr_assets.lib.runtime.errors import ConfigError

    scores = [0.99, 0.95, 0.94, 0.2]
    assert false_negative_mask(scores, 1.0, relative_margin=0.05) == [True, True, False, False]
    assert false_negative_mask(scores, 1.0, relative_margin=None, absolute_margin=0.1) == [True, True, True, False]
    assert false_negative_mask(scores, 1.0, relative_margin=None) == [False] * 4
    with pytest.raises(ConfigError, match="relative_margin must be in"):
        false_negative_mask(scores, 1.0, relative_margin=1.5)


def test_native_normalisation_equals_normalize_text_on_random_unicode() -> None:
    import random

    from hnr_assets.lib.mining.negatives import normalized_expr, text_hash_expr

    rng = random.Random(0)
    blocks = [(0x0, 0x80), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x590, 0x700), (0x900, 0x980)]
    blocks += [(0x1E00, 0x2190), (0x2460, 0x2500), (0x3000, 0x3100), (0x4E00, 0x4E80), (0xFB00, 0xFB10)]
    blocks += [(0xFF00, 0xFF70), (0x1F300, 0x1F400)]
    texts = ["  Héllo,   WORLD! ", "ﬁ café", "İstanbul ΣΑΣ", "a_b\x1fc", "", "¼ ② x²"]
    for _ in range(20_000):
        texts.append("".join(chr(rng.randrange(*rng.choice(blocks))) for _ in range(rng.randint(0, 25))))
    frame = pl.DataFrame({"t": [*texts, None]})
    native = frame.select(normalized_expr(pl.col("t")))["t"].to_list()
    assert native == [*(normalize_text(t) for t in texts), ""]
    hashes = frame.select(text_hash_expr(pl.col("t")))["t"].to_list()
    assert hashes[-1] is None  # a null text has no hash, as with map_elements(text_hash)
    by_norm: dict[str, int] = {}
    for norm, h in zip(native[:-1], hashes[:-1], strict=True):
        assert by_norm.setdefault(norm, h) == h  # equal normalised text, equal hash
    assert len(set(hashes[:-1])) == len(by_norm)  # and no collision among these
