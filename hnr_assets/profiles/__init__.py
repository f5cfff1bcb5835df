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


EXTENDS_KEY = "extends"
MAX_EXTENDS_DEPTH = 8


def merge_sections(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it: mappings merge key by key, anything else is replaced.

    Lists are replaced whole (a profile that extends another restates the generators or datasets it
    wants), so what a profile file says is never mixed element by element with another's list.
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_mapping(path: Path) -> dict:
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
    return data


def _extended_path(path: Path, target: object) -> Path:
    """The file an `extends:` value names: a bundled profile name, or a YAML path relative to `path`."""
    if not isinstance(target, str) or not target.strip():
        raise ProfileError(f"{path}: key '{EXTENDS_KEY}': a profile name or a YAML file path, got {target!r}")
    if target.endswith((".yaml", ".yml")):
        candidate = Path(target).expanduser()
        return candidate if candidate.is_absolute() else (path.parent / candidate).resolve()
    bundled = Path(__file__).resolve().parent / f"{target}.yaml"
    if not bundled.is_file():
        names = sorted(p.stem for p in bundled.parent.glob("*.yaml"))
        raise ProfileError(
            f"{path}: key '{EXTENDS_KEY}': no bundled profile {target!r} (bundled: {', '.join(names)}); "
            "name a YAML file to extend one of your own"
        )
    return bundled


def resolve_sections(path: Path) -> dict:
    """The sections of a profile file with every `extends:` ancestor merged under them (see `merge_sections`).

    Raises:
        ProfileError: An unreadable file, invalid YAML, an unknown parent, or a cycle of `extends:`.
    """
    chain: list[Path] = []
    layers: list[dict] = []
    current = Path(path).resolve()
    while True:
        if current in chain:
            cycle = " -> ".join(str(p) for p in [*chain, current])
            raise ProfileError(f"{path}: key '{EXTENDS_KEY}' makes a cycle: {cycle}")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise ProfileError(f"{path}: key '{EXTENDS_KEY}': more than {MAX_EXTENDS_DEPTH} levels of profiles")
        chain.append(current)
        data = _read_mapping(current)
        parent = data.pop(EXTENDS_KEY, None)
        layers.append(data)
        if parent is None:
            break
        current = _extended_path(current, parent)
    merged: dict = {}
    for layer in reversed(layers):
        merged = merge_sections(merged, layer)
    return merged


def load_profile(path: Path) -> Profile:
    """Read and validate a profile YAML file.

    A profile may start from another with `extends: <bundled name or YAML path>`: its sections are laid
    over the parent's (`merge_sections`), and the merged profile is validated as one.

    Args:
        path: The YAML file.

    Returns:
        The validated profile.

    Raises:
        ProfileError: Unreadable file, invalid YAML, or a key or value the schema refuses; the
            message names the file and every offending key.
    """
    path = Path(path)
    data = resolve_sections(path)
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
