"""The completion parser and the negative validator, on real and real-looking LLM outputs.

`data/llm_outputs_smollm2.json` holds real SmolLM2-135M-Instruct completions generated on this machine
(prompts v1 and single-v1, SciFact training pairs); `data/llm_outputs_handwritten.json` holds outputs
written by hand in the shapes larger models produce (thinking blocks, fences, JSON objects, headers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hnr_assets.lib.generation.llm_output import (
    REASONS,
    PairValidator,
    ValidationRules,
    drop_unfinished_sentence,
    parse_completion,
    strip_thinking,
    validate_candidates,
)

DATA = Path(__file__).resolve().parents[2] / "data"
HANDWRITTEN = json.loads((DATA / "llm_outputs_handwritten.json").read_text(encoding="utf-8"))
SMOLLM2 = json.loads((DATA / "llm_outputs_smollm2.json").read_text(encoding="utf-8"))
RULES = ValidationRules()


def test_there_are_at_least_twenty_fixtures_including_real_smollm2_outputs() -> None:
    assert len(HANDWRITTEN) + len(SMOLLM2) >= 20
    assert len(SMOLLM2) >= 10
    assert all("SmolLM2" in item["origin"] for item in SMOLLM2)


@pytest.mark.parametrize("item", HANDWRITTEN + SMOLLM2, ids=lambda item: item["id"])
def test_parser_finds_the_expected_passages(item: dict) -> None:
    parsed = parse_completion(item["text"], item["output"], truncated=item["truncated"])
    expect = item["expect"]
    assert (len(parsed.passages), parsed.form) == (expect["count"], expect["form"]), parsed.passages
    if "first" in expect:
        assert parsed.passages[0].startswith(expect["first"])
    for passage in parsed.passages:
        assert passage == passage.strip() and "\n" not in passage
        assert not passage.startswith(('"', "**", "Passage 1", "1.", "- "))


@pytest.mark.parametrize("item", SMOLLM2, ids=lambda item: item["id"])
def test_smollm2_outputs_get_the_recorded_verdicts(item: dict) -> None:
    parsed = parse_completion(item["text"], item["output"], truncated=item["truncated"])
    verdicts = validate_candidates(parsed.passages, item["query"], item["positive"], RULES, wanted=5)
    assert [v.reason for v in verdicts] == item["expect"]["reasons"]


def test_thinking_blocks() -> None:
    assert strip_thinking("<think>plan</think>\n\nanswer") == "answer"
    assert strip_thinking("<THINK>a</THINK>b<think>c</think>d") == "bd"
    assert strip_thinking("answer <think>never closed") == "answer"
    assert strip_thinking("reasoning that the template opened</think>answer") == "answer"


def test_truncated_single_passage_loses_its_unfinished_sentence() -> None:
    item = next(i for i in HANDWRITTEN if i["id"] == "single-truncated")
    parsed = parse_completion(item["text"], "single", truncated=True)
    assert parsed.passages[0].endswith("high latitudes.")
    assert drop_unfinished_sentence("No sentence end here") == "No sentence end here"
    assert drop_unfinished_sentence("One. Two is cut") == "One."


def test_truncated_json_keeps_complete_strings_only() -> None:
    parsed = parse_completion('Sure:\n["first passage is complete here", "second one is compl', "list", True)
    assert parsed == type(parsed)(("first passage is complete here",), "json-partial")


def test_nothing_usable() -> None:
    assert parse_completion("", "list").form == "none"
    assert parse_completion("<think>only thinking", "single").passages == ()


QUERY = "Vitamin D deficiency increases the risk of multiple sclerosis."
POSITIVE = (
    "Low serum 25-hydroxyvitamin D levels were associated with a higher risk of multiple sclerosis in a "
    "prospective cohort of 7 million US military personnel, and the association was strongest among whites."
)
GOOD = "Vitamin D is made in the skin after exposure to sunlight, and its levels fall during the winter months."


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        ("   ", "empty"),
        ("Vitamin D and sclerosis.", "too_short"),
        ("vitamin serum cohort sclerosis risk deficiency levels personnel military association", "not_prose"),
        ("Vitamin D \ufffd\x05 is the risk of the skin and of the sun in the winter.", "not_prose"),
        ("the study of the study of the study of the study of the study of the study of the", "repetitive"),
        ("Does vitamin D deficiency increase the risk of multiple sclerosis?", "copies_query"),
        (POSITIVE, "copies_positive"),
        ("In short: " + POSITIVE[:120] + " in the cohort.", "copies_positive"),
        (GOOD, None),
    ],
)
def test_each_rejection_reason(candidate: str, reason: str | None) -> None:
    verdict = validate_candidates([candidate], QUERY, POSITIVE, RULES, wanted=5)[0]
    assert verdict.reason == reason, verdict.detail


def test_duplicates_and_surplus_within_a_pair() -> None:
    validator = PairValidator(QUERY, POSITIVE, RULES, wanted=2)
    other = "Multiple sclerosis is diagnosed with magnetic resonance imaging and a study of the spinal fluid."
    reasons = [
        validator.check(GOOD).reason,
        validator.check(GOOD.upper()).reason,  # same text, other case
        validator.check(GOOD.replace("winter months", "cold winter months")).reason,  # near-duplicate
        validator.check(other).reason,
        validator.check("A third passage that is fine on its own, about the history of the disease.").reason,
    ]
    assert reasons == [None, "duplicate", "duplicate", None, "surplus"]
    assert validator.kept == [GOOD, other] and validator.full


def test_rules_are_configurable() -> None:
    loose = ValidationRules(min_words=2, min_stopword_share=0.0)
    assert validate_candidates(["Vitamin D and sclerosis."], QUERY, POSITIVE, loose, 5)[0].reason is None


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.characters(), max_size=400)
    | st.lists(
        st.sampled_from(['"', "[", "]", "{", "}", ":", ",", "\n", "1.", "A:", "**", "<think>", "```", "word"])
    ).map("".join),
    output=st.sampled_from(["list", "single"]),
    truncated=st.booleans(),
)
def test_parser_and_validator_never_raise(text: str, output: str, truncated: bool) -> None:
    parsed = parse_completion(text, output, truncated)
    for verdict in validate_candidates(parsed.passages, QUERY, POSITIVE, RULES, wanted=5):
        assert verdict.reason is None or verdict.reason in REASONS
