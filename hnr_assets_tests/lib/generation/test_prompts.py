"""Prompt templates: the shipped ones load and render; broken ones are errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnr_assets.lib.generation.prompts import available_prompts, load_prompt, truncate_words
from hnr_assets.lib.runtime.errors import ConfigError


@pytest.mark.parametrize("template_id", available_prompts())
def test_shipped_templates_load_and_render(template_id: str) -> None:
    template = load_prompt(template_id)
    messages = template.messages("does X cause Y?", "A passage about X and Y. " * 10, max_positive_words=12)
    assert messages[-1]["role"] == "user"
    assert "does X cause Y?" in messages[-1]["content"]
    assert "A passage about X and Y. A passage about X and Y. …" in messages[-1]["content"]
    assert len(template.sha256) == 64
    assert template.output in ("list", "single")


def test_study_template_asks_for_five_as_json() -> None:
    template = load_prompt("v1")
    assert (template.output, template.count) == ("list", 5)
    assert "JSON array of 5 strings" in template.messages("q", "p")[-1]["content"]


def test_truncate_words() -> None:
    assert truncate_words("a  b\nc d", None) == "a b c d"
    assert truncate_words("a b c d", 2) == "a b …"
    assert truncate_words("a b", 2) == "a b"


def test_braces_in_the_positive_are_kept_verbatim() -> None:
    content = load_prompt("single-v1").messages("q {x}", "uses {positive} and {0}")[-1]["content"]
    assert "uses {positive} and {0}" in content and "q {x}" in content


GOOD = "id: t\noutput: list\ncount: 5\nsystem: s\nuser: 'Q: {query} P: {positive} n={count}'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("id: t", "id: other"), "differs from the file name"),
        (GOOD + "temperature: 1\n", "unknown keys ['temperature']"),
        (GOOD.replace("output: list", "output: many"), "output must be 'list' or 'single'"),
        (GOOD.replace("output: list", "output: single"), "count must be a positive integer (1 for output 'single')"),
        (GOOD.replace("{positive}", "{passage}"), "use {query} and {positive}"),
        (GOOD.replace(" P: {positive}", ""), "use {query} and {positive}"),
        (GOOD.replace("system: s", "system: 'hi {query}'"), "the system message takes no fields"),
        ("id: t\noutput: list\n", "missing keys ['user']"),
        ("- a\n", "a prompt template is a mapping"),
        ("id: [t\n", "invalid YAML"),
    ],
)
def test_broken_templates_are_errors_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_prompt("t", tmp_path)
    assert str(tmp_path / "t.yaml") in str(err.value)
    assert message in str(err.value)


def test_unknown_template_lists_the_known_ones(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace("id: t", "id: a"))
    with pytest.raises(ConfigError, match=r"prompt template 'zz' not found .* \(known: a\)"):
        load_prompt("zz", tmp_path)
    with pytest.raises(ConfigError, match="invalid prompt template id"):
        load_prompt("../etc/passwd", tmp_path)
