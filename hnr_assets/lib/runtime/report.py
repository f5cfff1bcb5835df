"""Small Markdown helpers for materialization metadata (samples, tables)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def _cell(value: Any, max_chars: int) -> str:
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text.replace("|", "\\|")


def md_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], max_chars: int = 120) -> str:
    """A Markdown table; cells are flattened to one line, truncated and pipe-escaped."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v, max_chars) for v in row) + " |" for row in rows]
    return "\n".join(lines)
