"""Training pairs: (query, positive passage) rows from a judged split of a BEIR-layout dataset."""

from __future__ import annotations

import polars as pl

PAIRS_SCHEMA = {
    "query_id": pl.String,
    "query": pl.String,
    "positive_id": pl.String,
    "positive": pl.String,
}


def passage_expr(title: str = "title", text: str = "text") -> pl.Expr:
    """Polars twin of `beir.passage_text`: `title + " " + text`, stripped; just `text` without a title."""
    t = pl.col(title).fill_null("").str.strip_chars()
    return (
        pl.when(t != "").then(pl.concat_str([t, pl.col(text)], separator=" ")).otherwise(pl.col(text)).str.strip_chars()
    )


def build_pairs(
    queries: pl.DataFrame,
    qrels: pl.DataFrame,
    corpus: pl.DataFrame,
    max_pairs: int | None = None,
    seed: int = 0,
) -> tuple[pl.DataFrame, int]:
    """One row per judged-relevant (query, document): `query_id, query, positive_id, positive`.

    A query with several positives gives several rows (as in MS MARCO training). Positives whose
    passage text is empty are dropped (they teach nothing) and counted.

    Args:
        queries: `query_id, text`.
        qrels: `query_id, doc_id, grade`; rows with grade > 0 are positives.
        corpus: `doc_id, title, text`.
        max_pairs: Keep a seeded random sample of at most this many pairs.
        seed: Seed of that sample.

    Returns:
        The pairs, in qrels order, and the number of pairs dropped for an empty positive.
    """
    positives = qrels.filter(pl.col("grade") > 0).with_row_index("_order")
    pairs = (
        positives.join(queries.rename({"text": "query"}), on="query_id", how="inner")
        .join(
            corpus.select("doc_id", passage_expr().alias("positive")),
            on="doc_id",
            how="inner",
        )
        .rename({"doc_id": "positive_id"})
    )
    empty = pairs.filter(pl.col("positive") == "").height
    pairs = pairs.filter(pl.col("positive") != "")
    if max_pairs is not None and pairs.height > max_pairs:
        pairs = pairs.sample(n=max_pairs, seed=seed, shuffle=False)
    pairs = pairs.sort("_order").select(list(PAIRS_SCHEMA)).cast(PAIRS_SCHEMA)
    return pairs, empty


def validate_pairs(pairs: pl.DataFrame, corpus_ids: pl.Series) -> list[str]:
    """Contract of stored pairs: non-empty, unique (query_id, positive_id), texts present, positives in the corpus."""
    problems = []
    if dict(pairs.schema) != PAIRS_SCHEMA:
        return [f"schema {dict(pairs.schema)} differs from {PAIRS_SCHEMA}"]
    if pairs.height == 0:
        problems.append("no pairs")
    if pairs.select(pl.struct("query_id", "positive_id").is_duplicated().any()).item():
        problems.append("duplicate (query_id, positive_id) pairs")
    for col in PAIRS_SCHEMA:
        if pairs[col].null_count() or (pairs[col].str.strip_chars() == "").any():
            problems.append(f"null or empty {col}")
    unknown = pairs.filter(~pl.col("positive_id").is_in(corpus_ids.implode())).height
    if unknown:
        problems.append(f"{unknown} positives are not in the training corpus")
    return problems
