"""Versioned prompt templates for LLM-written hard negatives (`hnr_assets/prompts/<id>.yaml`).

A template file holds:

| key           | meaning                                                                           |
|---------------|-----------------------------------------------------------------------------------|
| `id`          | the template id, equal to the file name without `.yaml` (e.g. `v1`, `single-v2`) |
| `description` | one line for humans                                                               |
| `output`      | `list`: `count` passages in one completion; `single`: one passage per completion  |
| `count`       | passages asked for in one completion (1 for `single`)                             |
| `system`      | system message, or null                                                           |
| `user`        | user message; `{query}`, `{positive}` and `{count}` are filled in (`{{` for `{`)  |

Templates are immutable once used: a changed wording is a new file. The content hash (`sha256`) is
part of the generation signature, so a partition generated with another wording is never mixed into
a resumed run.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.io import check_safe_name

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
_FIELDS = {"query", "positive", "count"}
_KEYS = {"id", "description", "output", "count", "system", "user"}


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt template.

    Attributes:
        id: Template id (file name without `.yaml`).
        description: One line for humans.
        output: `list` (several passages per completion) or `single` (one passage per completion).
        count: Passages asked for in one completion.
        system: System message, or None.
        user: User message with `{query}`, `{positive}`, `{count}` fields.
        sha256: Hash of the file's bytes (part of the generation signature).
        path: The file it was read from.
    """

    id: str
    description: str
    output: Literal["list", "single"]
    count: int
    system: str | None
    user: str
    sha256: str
    path: Path

    def messages(self, query: str, positive: str, max_positive_words: int | None = None) -> list[dict[str, str]]:
        """Chat messages for one (query, positive) pair.

        Args:
            query: Query text.
            positive: Positive passage text.
            max_positive_words: Cut the positive to this many words (None: whole passage).

        Returns:
            `[{"role": "system", ...}, {"role": "user", ...}]` (no system message when the template has none).
        """
        values = {"query": query.strip(), "positive": truncate_words(positive, max_positive_words), "count": self.count}
        user = self.user.format_map(values).strip()
        messages = [{"role": "system", "content": self.system.strip()}] if self.system else []
        return [*messages, {"role": "user", "content": user}]


def truncate_words(text: str, max_words: int | None) -> str:
    """The first `max_words` whitespace-separated words of `text` (all of it when None), with `…` if cut."""
    text = " ".join(text.split())
    if max_words is None:
        return text
    words = text.split(" ")
    return text if len(words) <= max_words else " ".join(words[:max_words]) + " …"


def _problem(path: Path, what: str) -> ConfigError:
    return ConfigError(f"{path}: {what}")


def load_prompt(template_id: str, folder: Path = PROMPTS_DIR) -> PromptTemplate:
    """Read and validate one template.

    Args:
        template_id: The template id (file `<folder>/<id>.yaml`).
        folder: Where templates live (the package's `prompts/` by default).

    Returns:
        The template.

    Raises:
        ConfigError: No such template, invalid YAML, unknown or missing keys, a field other than
            `{query}`, `{positive}`, `{count}`, or a missing `{query}`/`{positive}`.
    """
    check_safe_name(template_id, "prompt template id")
    path = Path(folder) / f"{template_id}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(folder).glob("*.yaml"))) or "none"
        raise ConfigError(f"prompt template {template_id!r} not found in {folder} (known: {known})")
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _problem(path, f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise _problem(path, "a prompt template is a mapping")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise _problem(path, f"unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    missing = sorted(k for k in ("id", "output", "user") if k not in data)
    if missing:
        raise _problem(path, f"missing keys {missing}")
    if data["id"] != template_id:
        raise _problem(path, f"id {data['id']!r} differs from the file name {template_id!r}")
    output = data["output"]
    if output not in ("list", "single"):
        raise _problem(path, f"output must be 'list' or 'single', got {output!r}")
    count = data.get("count", 1)
    if not isinstance(count, int) or count < 1 or (output == "single" and count != 1):
        raise _problem(path, f"count must be a positive integer (1 for output 'single'), got {count!r}")
    user = data["user"]
    system = data.get("system")
    if not isinstance(user, str) or not user.strip() or (system is not None and not isinstance(system, str)):
        raise _problem(path, "user must be a non-empty string and system a string or null")
    fields = {name for _, name, _, _ in string.Formatter().parse(user) if name is not None}
    if fields - _FIELDS or not {"query", "positive"} <= fields:
        raise _problem(
            path, f"user message fields {sorted(fields)}: use {{query}} and {{positive}} (and {{count}}) only"
        )
    if system and any(name for _, name, _, _ in string.Formatter().parse(system)):
        raise _problem(path, "the system message takes no fields")
    return PromptTemplate(
        id=template_id,
        description=str(data.get("description", "")),
        output=output,
        count=count,
        system=system,
        user=user,
        sha256=hashlib.sha256(raw).hexdigest(),
        path=path,
    )


def available_prompts(folder: Path = PROMPTS_DIR) -> list[str]:
    """Ids of the templates in `folder`."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))
