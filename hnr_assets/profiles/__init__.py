"""Profiles: `paper` (GPUs, the study's settings), `local` (2-core CPU, offline), `test` (CI, seconds).

`load_profile` reads one YAML file and validates it against `schema.Profile`; any problem is a
`ProfileError` naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.profiles.schema import Profile

__all__ = ["Profile", "ProfileError", "load_profile"]


class ProfileError(ConfigError):
    """A profile file is unreadable or breaks the schema."""


def _format_loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "<top level>"


def load_profile(path: Path) -> Profile:
    """Read and validate a profile YAML file.

    Args:
        path: The YAML file.

    Returns:
        The validated profile.

    Raises:
        ProfileError: Unreadable file, invalid YAML, or a key or value the schema refuses; the
            message names the file and every offending key.
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ProfileError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a mapping of sections, got {type(data).__name__}")
    try:
        return Profile.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = _format_loc(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"key '{key}': {msg}")
        raise ProfileError(f"{path}: " + "; ".join(problems)) from None
