"""Models that ship their own Python code run it only when the profile says so for that model.

A Hugging Face folder maps classes to Python files of its own through `auto_map` (in `config.json` or
`tokenizer_config.json`); a sentence-transformers folder can name modules outside the library in
`modules.json`. Loading such a folder with `trust_remote_code=True` executes those files. hnr passes
`trust_remote_code=False` everywhere unless the profile sets `trust_remote_code: true` next to that
model (a generator, the cross-encoder or the base encoder), and refuses a folder with code of its own
up front, with the profile key to set, rather than failing somewhere inside transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

from hnr_assets.lib.runtime.errors import ConfigError

_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json")


def own_code(folder: Path) -> list[str]:
    """Where a model folder asks to run Python code of its own (empty when it does not).

    Args:
        folder: A transformers or sentence-transformers folder.

    Returns:
        Descriptions such as `config.json auto_map: AutoModel -> modeling_x.XModel`.
    """
    folder = Path(folder)
    found = []
    for name in _CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the loader reports an unreadable config with its own error
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, dict):
            found += [f"{name} auto_map: {k} -> {v}" for k, v in sorted(auto_map.items())]
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            kind = str(entry.get("type", "")) if isinstance(entry, dict) else ""
            if kind and not kind.startswith("sentence_transformers."):
                found.append(f"modules.json module {kind}")
    return found


def trust_remote_code(folder: Path, allowed: bool, setting: str) -> bool:
    """The `trust_remote_code` to load `folder` with; refuses code the profile did not allow.

    Args:
        folder: The model folder about to be loaded.
        allowed: The profile's `trust_remote_code` for this model.
        setting: The profile key that turns it on (named in the error).

    Returns:
        `allowed`.

    Raises:
        ConfigError: The folder ships Python code and `allowed` is false.
    """
    code = own_code(folder)
    if code and not allowed:
        raise ConfigError(
            f"{folder}: the model ships Python code of its own ({'; '.join(code[:3])}); hnr does not run it "
            f"unless the profile sets `{setting}: true` for this model (only for models you trust)"
        )
    return allowed
