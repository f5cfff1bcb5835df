"""The negative-set contract shared by every source (BM25, cross-encoder, each LLM generator).

A negative set is one Parquet file in long format, one row per negative (`NEGATIVES_SCHEMA`):

| column        | type    | meaning                                                          |
|---------------|---------|------------------------------------------------------------------|
| query_id      | str     | pair key, with positive_id                                       |
| positive_id   | str     |                                                                  |
| query         | str     | query text                                                       |
| positive      | str     | positive passage text                                            |
| negative_rank | int32   | 1..n within the pair (mined: by retrieval order; LLM: as written) |
| negative_id   | str     | corpus id of a mined negative; null for a written one            |
| negative      | str     | negative passage text                                            |
| score         | float64 | BM25 / cross-encoder score; null when there is none              |
| source        | str     | `bm25`, `ce`, or `llm-<generator key>`                           |

A pair with fewer negatives than asked keeps the rows it has; a pair with none has no row.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import polars as pl

NEGATIVES_SCHEMA = {
    "query_id": pl.String,
    "positive_id": pl.String,
    "query": pl.String,
    "positive": pl.String,
    "negative_rank": pl.Int32,
    "negative_id": pl.String,
    "negative": pl.String,
    "score": pl.Float64,
    "source": pl.String,
}
NEGATIVES_PER_PAIR = 5

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """Text as compared for identity: NFKC, lower case, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    return _WS.sub(" ", _PUNCT.sub(" ", text)).strip()


def text_hash(text: str) -> str:
    """A short hash of the normalised text: equal for passages that differ only in case, spacing, punctuation."""
    return hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=8).hexdigest()


def normalized_expr(expr: pl.Expr) -> pl.Expr:
    """`normalize_text` as a polars expression (native, multi-threaded; no Python call per row).

    NFKC, lower case, every run of characters other than letters, digits and `_` (Python's `\\w`: Unicode
    categories L* and N*) becomes one space, stripped. Equal to `normalize_text` on every string
    (checked on random text from 17 Unicode blocks), up to the Unicode versions of Python and polars.
    """
    return (
        expr.fill_null("")
        .str.normalize("NFKC")
        .str.to_lowercase()
        .str.replace_all(r"[^\p{L}\p{N}_]+", " ")
        .str.strip_chars(" ")
    )


def text_hash_expr(expr: pl.Expr) -> pl.Expr:
    """A 64-bit hash of the normalised text, as a native polars expression (UInt64).

    Equal for texts whose `normalize_text` is equal, like `text_hash`, but its values are not
    `text_hash`'s and are stable only within one process (polars' `hash`): compare them, never store them.
    A null text has a null hash (as `map_elements(text_hash)` gave).
    """
    return pl.when(expr.is_not_null()).then(normalized_expr(expr).hash(seed=0x686E72))


def empty_negatives() -> pl.DataFrame:
    return pl.DataFrame(schema=NEGATIVES_SCHEMA)


def hash_texts(texts: pl.Series, chunk_rows: int = 100_000) -> pl.Series:
    """`text_hash_expr` of a column, a slice at a time: the normalised copies it makes along the way
    (~3x the text) then cost one slice, not the whole column (2.7M negatives: ~6 GB)."""
    parts = [
        texts.slice(i, chunk_rows).to_frame("t").select(text_hash_expr(pl.col("t")))["t"]
        for i in range(0, texts.len(), chunk_rows)
    ]
    return pl.concat(parts).alias(texts.name) if parts else pl.Series(texts.name, [], dtype=pl.UInt64)


def validate_negatives(df: pl.DataFrame, *, per_pair: int = NEGATIVES_PER_PAIR) -> dict[str, list[str]]:
    """Check a negative set against the contract.

    Returns:
        Problems grouped by check name (empty lists when the set is sound):
        `schema`, `not_positive` (no negative equals its positive, by id or by normalised text),
        `distinct` (no two negatives of a pair are the same passage, by id or normalised text),
        `ranks` (ranks 1..n without gaps, at most `per_pair`).
    """
    problems: dict[str, list[str]] = {"schema": [], "not_positive": [], "distinct": [], "ranks": []}
    if dict(df.schema) != NEGATIVES_SCHEMA:
        problems["schema"].append(f"schema {dict(df.schema)} differs from {NEGATIVES_SCHEMA}")
        return problems
    required = ["query_id", "positive_id", "query", "positive", "negative_rank", "negative", "source"]
    for col in required:
        if df[col].null_count():
            problems["schema"].append(f"{df[col].null_count()} null values in {col}")
    empty = df.filter(pl.col("negative").str.strip_chars() == "").height
    if empty:
        problems["schema"].append(f"{empty} empty negatives")
    if df.height == 0:
        return problems

    hashed = df.with_columns(
        hash_texts(df["negative"]).alias("_neg_hash"), hash_texts(df["positive"]).alias("_pos_hash")
    )
    by_id = hashed.filter(pl.col("negative_id").is_not_null() & (pl.col("negative_id") == pl.col("positive_id")))
    by_text = hashed.filter(pl.col("_neg_hash") == pl.col("_pos_hash"))
    if by_id.height:
        problems["not_positive"].append(f"{by_id.height} negatives have their positive's id")
    if by_text.height:
        problems["not_positive"].append(f"{by_text.height} negatives have their positive's text")

    pair = ["query_id", "positive_id"]
    dup_text = hashed.select(pl.struct(*pair, "_neg_hash").is_duplicated().sum()).item()
    if dup_text:
        problems["distinct"].append(f"{dup_text} rows repeat another negative of the same pair (normalised text)")
    with_id = hashed.filter(pl.col("negative_id").is_not_null())
    dup_id = with_id.select(pl.struct(*pair, "negative_id").is_duplicated().sum()).item()
    if dup_id:
        problems["distinct"].append(f"{dup_id} rows repeat another negative id of the same pair")

    ranks = df.group_by(pair).agg(
        pl.col("negative_rank").sort().alias("ranks"),
        pl.len().alias("n"),
        pl.col("negative_rank").n_unique().alias("u"),
    )
    bad = ranks.filter(
        (pl.col("n") > per_pair)
        | (pl.col("u") != pl.col("n"))
        | (pl.col("ranks").list.first() != 1)
        | (pl.col("ranks").list.last() != pl.col("n"))
    )
    if bad.height:
        problems["ranks"].append(f"{bad.height} pairs have ranks that are not 1..n (n <= {per_pair})")
    return problems


def coverage(df: pl.DataFrame, pairs: pl.DataFrame, *, per_pair: int = NEGATIVES_PER_PAIR) -> dict[str, float | int]:
    """How many training pairs got a full set of negatives.

    Args:
        df: A negative set.
        pairs: The training pairs (`query_id`, `positive_id`).

    Returns:
        `pairs`, `full` (pairs with `per_pair` negatives), `partial`, `none`, and `full_share` in [0, 1].
    """
    counts = df.group_by("query_id", "positive_id").len()
    joined = pairs.select("query_id", "positive_id").join(counts, on=["query_id", "positive_id"], how="left")
    n = joined.height
    full = joined.filter(pl.col("len") >= per_pair).height
    none = joined.filter(pl.col("len").is_null()).height
    return {
        "pairs": n,
        "full": full,
        "partial": n - full - none,
        "none": none,
        "full_share": full / n if n else 0.0,
    }
