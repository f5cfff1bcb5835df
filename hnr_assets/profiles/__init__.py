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
LIKE_KEY = "like"
MAX_EXTENDS_DEPTH = 8


def merge_sections(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it: mappings merge key by key, anything else is replaced.

    Lists are replaced whole (a profile that extends another restates the generators or datasets it
    wants), so what a profile file says is never mixed element by element with another's list. An item
    of such a list may start from an item of the list it replaces (`like:`, see `resolve_likes`).
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def _item_id(item: object) -> object:
    """What a list item is known by: its `key` (generators), else its `name` (datasets, ...)."""
    if isinstance(item, dict):
        return item.get("key", item.get("name"))
    return None


def resolve_likes(path: Path, base: dict, layer: dict, where: tuple = ()) -> dict:
    """`layer` with every list item that says `like: <id>` replaced by that item of `base`'s list, merged.

    `like: smollm2-135m` in `generators` starts from the generator `smollm2-135m` of the profile being
    extended and lays the item's other keys over it (`merge_sections`), so a profile that adds a variant
    of a generator states only what differs. Items without `like` are taken as written.

    Raises:
        ProfileError: `like` names no item of the extended profile's list, or is not a string.
    """
    resolved = dict(layer)
    for key, value in layer.items():
        here = (*where, key)
        below = base.get(key) if isinstance(base, dict) else None
        if isinstance(value, dict):
            resolved[key] = resolve_likes(path, below if isinstance(below, dict) else {}, value, here)
        elif isinstance(value, list) and any(isinstance(item, dict) and LIKE_KEY in item for item in value):
            parents = below if isinstance(below, list) else []
            items = []
            for number, item in enumerate(value):
                if not (isinstance(item, dict) and LIKE_KEY in item):
                    items.append(item)
                    continue
                target = item[LIKE_KEY]
                matches = [parent for parent in parents if _item_id(parent) == target]
                if not isinstance(target, str) or not matches:
                    known = ", ".join(str(_item_id(parent)) for parent in parents) or "none"
                    raise ProfileError(
                        f"{path}: key '{_format_loc((*here, number, LIKE_KEY))}': no item {target!r} in the "
                        f"extended profile's '{_format_loc(here)}' (it has: {known})"
                    )
                items.append(merge_sections(matches[0], {k: v for k, v in item.items() if k != LIKE_KEY}))
            resolved[key] = items
    return resolved


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
    layers: list[tuple[Path, dict]] = []
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
        layers.append((current, data))
        if parent is None:
            break
        current = _extended_path(current, parent)
    merged: dict = {}
    for source, layer in reversed(layers):
        merged = merge_sections(merged, resolve_likes(source, merged, layer))
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
