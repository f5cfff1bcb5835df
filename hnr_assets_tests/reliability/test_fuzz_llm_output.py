"""Fuzzing the LLM output path and the negative-set validator.

`lib/generation/test_llm_output.py` fuzzes the parser for exceptions (300 examples). Here, 3,000 generated
completions go through the same path as generation (`parse_completion`, then a `PairValidator` per
pair, as `lib.generation.runner` does) and every kept passage must be a negative the blocking checks accept:
not empty, not the positive (by the normalised text the `not_positive` check compares), not a
repeat within its pair. The completions mix the positive itself in disguise (other case, punctuation,
spacing, full-width letters, inside JSON, numbered lists, thinking blocks and code fences) with valid
passages, the query and noise. All kept passages, as rows, then pass `validate_negatives`.

The negative-set validator itself is fuzzed on generated frames: it returns problems, never raises.
"""

from __future__ import annotations

import json
import random

import polars as pl
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hnr_assets.lib.generation.llm_output import REASONS, PairValidator, ValidationRules, parse_completion
from hnr_assets.lib.mining.negatives import NEGATIVES_SCHEMA, normalize_text, validate_negatives

EXAMPLES = 3000
RULES = ValidationRules()
WORDS = [
    "the",
    "of",
    "and",
    "in",
    "to",
    "a",
    "is",
    "that",
    "for",
    "with",
    "as",
    "on",
    "by",
    "vaccine",
    "immune",
    "response",
    "gene",
    "protein",
    "cancer",
    "tumor",
    "heart",
    "blood",
    "pressure",
    "study",
    "patients",
    "trial",
    "cohort",
    "risk",
    "effect",
    "dose",
    "brain",
    "memory",
    "climate",
    "ocean",
    "carbon",
    "diet",
    "sugar",
    "cell",
    "therapy",
    "results",
    "were",
    "was",
    "are",
    "be",
    "this",
    "these",
    "which",
]
FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"}


def _prose(seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(9, 30))).capitalize() + "."


# One draw per text (a seed) keeps 3,000 examples fast; the texts still vary in words and length.
prose = st.integers(min_value=0, max_value=2**32).map(_prose)


def _disguise(text: str, seed: int) -> str:
    """`text` changed in ways that keep its normalised form: case, punctuation, spacing, width, quotes."""
    rng = random.Random(seed)
    out = text
    for change in rng.sample(["upper", "title", "punct", "space", "fullwidth", "quote"], rng.randint(0, 3)):
        if change == "upper":
            out = out.upper()
        elif change == "title":
            out = out.title()
        elif change == "punct":
            out = out.replace(" ", rng.choice([", ", " - ", "; ", " ... "]), 2) + "!"
        elif change == "space":
            out = "  " + out.replace(" ", rng.choice(["  ", "\t", " \u00a0"]), 3) + " \u200b "
        elif change == "fullwidth":
            out = "".join(FULLWIDTH.get(c, c) for c in out)
        else:
            out = f'"{out}"'
    return out


@st.composite
def completion(draw) -> tuple[str, str, str, str]:
    # Plain seeds drive the choice of texts (one draw each), Hypothesis draws the noise and the layout.
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
    positive, query = _prose(rng.getrandbits(32)), _prose(rng.getrandbits(32))
    noise = draw(st.lists(st.text(max_size=40) | st.sampled_from(["", "   ", "\u200b", "...", "N/A"]), max_size=2))
    candidates = []
    for _ in range(rng.randint(1, 7)):
        kind = rng.choice(["positive", "positive", "prose", "prose", "query", "noise"])
        if kind == "positive":
            candidates.append(_disguise(positive, rng.getrandbits(32)))
        elif kind == "query":
            candidates.append(_disguise(query, rng.getrandbits(32)))
        elif kind == "noise" and noise:
            candidates.append(rng.choice(noise))
        else:
            candidates.append(_prose(rng.getrandbits(32)))
    layout = draw(st.sampled_from(["json", "numbered", "bullets", "single", "fenced", "thinking", "object"]))
    if layout == "json":
        text = json.dumps(candidates, ensure_ascii=draw(st.booleans()))
    elif layout == "numbered":
        text = "Here are five passages:\n" + "\n".join(f"{i}. {c}" for i, c in enumerate(candidates, 1))
    elif layout == "bullets":
        text = "\n".join(f"- {c}" for c in candidates)
    elif layout == "single":
        text = candidates[0]
    elif layout == "fenced":
        text = "```json\n" + json.dumps(candidates, indent=1) + "\n```"
    elif layout == "thinking":
        text = f"<think>{positive}</think>\n" + json.dumps(candidates)
    else:
        text = json.dumps({"passages": [{"text": c} for c in candidates]})
    output = "single" if layout == "single" else "list"
    return text, output, query, positive


def test_kept_passages_are_never_empty_the_positive_or_repeated() -> None:
    rows: list[dict] = []
    counts = {"positive_copies_offered": 0, "positive_copies_rejected": 0, "kept": 0}

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(case=completion(), truncated=st.booleans())
    def one(case, truncated: bool) -> None:
        text, output, query, positive = case
        parsed = parse_completion(text, output, truncated)
        validator = PairValidator(query, positive, RULES, wanted=5)
        positive_norm = normalize_text(positive)
        for passage in parsed.passages:
            verdict = validator.check(passage)
            assert verdict.reason is None or verdict.reason in REASONS
            if normalize_text(passage) == positive_norm:
                counts["positive_copies_offered"] += 1
                assert verdict.reason is not None
                counts["positive_copies_rejected"] += 1
        kept = validator.kept
        norms = [normalize_text(k) for k in kept]
        assert all(k.strip() and n for k, n in zip(kept, norms, strict=True))
        assert positive_norm not in norms
        assert len(set(norms)) == len(norms)
        counts["kept"] += len(kept)
        event(f"kept {len(kept)}")
        pair = f"p{len(rows)}"
        rows.extend(
            {
                "query_id": pair,
                "positive_id": pair,
                "query": query,
                "positive": positive,
                "negative_rank": rank,
                "negative_id": None,
                "negative": neg,
                "score": None,
                "source": "llm-fuzz",
            }
            for rank, neg in enumerate(kept, 1)
        )

    one()
    # The generated cases did exercise the rule: the positive was offered, in disguise, many times.
    assert counts["positive_copies_offered"] >= 200 and counts["kept"] >= 1000, counts
    frame = pl.DataFrame(rows, schema=NEGATIVES_SCHEMA)
    assert validate_negatives(frame) == {"schema": [], "not_positive": [], "distinct": [], "ranks": []}


column_values = {
    pl.String: st.none() | st.text(max_size=12) | st.sampled_from(["", " ", "same", "SAME!"]),
    pl.Int32: st.none() | st.integers(min_value=-3, max_value=8),
    pl.Float64: st.none() | st.floats(allow_nan=True, allow_infinity=True),
}


@st.composite
def negative_frames(draw) -> pl.DataFrame:
    schema = dict(NEGATIVES_SCHEMA)
    if draw(st.integers(0, 9)) == 0:  # sometimes a broken schema
        victim = draw(st.sampled_from(sorted(schema)))
        if draw(st.booleans()):
            schema.pop(victim)
        else:
            schema[victim] = pl.Int64 if schema[victim] != pl.Int64 else pl.String
    n = draw(st.integers(0, 8))
    data = {}
    for name, dtype in schema.items():
        strategy = column_values.get(
            dtype, st.none() | st.integers(-3, 3).map(str) if dtype == pl.String else st.none()
        )
        if dtype == pl.Int64:
            strategy = st.none() | st.integers(-3, 3)
        data[name] = draw(st.lists(strategy, min_size=n, max_size=n))
    return pl.DataFrame(data, schema=schema)


@settings(max_examples=300, deadline=None)
@given(frame=negative_frames())
def test_negative_set_validator_reports_problems_and_never_raises(frame: pl.DataFrame) -> None:
    problems = validate_negatives(frame)
    assert set(problems) == {"schema", "not_positive", "distinct", "ranks"}
    assert all(isinstance(p, str) for values in problems.values() for p in values)
    if dict(frame.schema) != NEGATIVES_SCHEMA:
        assert problems["schema"]
    elif frame.height and frame["negative"].null_count() == 0:
        same = frame.filter(
            pl.col("negative").map_elements(normalize_text, return_dtype=pl.String)
            == pl.col("positive").map_elements(normalize_text, return_dtype=pl.String)
        )
        if same.height:
            assert problems["not_positive"]
