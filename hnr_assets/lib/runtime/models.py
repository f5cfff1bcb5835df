"""Where a model comes from: one parser of the profile's model references, one model hub downloader.

Every model of a profile (the base encoder, the cross-encoder, each generator) is named the same way:

- `tiny-random`: a tiny random model built in the run (`lib.runtime.tiny_models`; tests and CI);
- `package:<distribution>[/<folder>]`: files shipped inside an installed Python package;
- an absolute folder (`/...`, or `~/...`, expanded);
- anything else: a model hub id (`name` or `owner/name`), with an optional revision beside it.

`parse_model_reference` classifies the string (`lib.runtime.names.check_model_reference` validates it
while a profile loads); each stage then finds the files its way (a sentence-transformers folder in a
package, a folder inside a package, the GGUF file a package ships) and downloads hub models with
`hub_snapshot`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hnr_assets.lib.runtime.errors import DownloadError

TINY_RANDOM = "tiny-random"
PACKAGE_PREFIX = "package:"

# `served`: a generator whose OpenAI-compatible server holds the weights (no files here).
Kind = Literal["tiny-random", "package", "path", "hub", "served"]


@dataclass(frozen=True)
class ModelReference:
    """A parsed model reference.

    Attributes:
        kind: `tiny-random`, `package`, `path`, `hub` (or `served`, for a generator behind a server).
        value: `tiny-random`; `<distribution>[/<folder>]` for a package; the expanded absolute folder;
            the hub id.
    """

    kind: Kind
    value: str

    @property
    def distribution(self) -> str:
        """The distribution (or importable package) name of a `package:` reference."""
        return self.value.strip("/").partition("/")[0]

    @property
    def inner(self) -> str:
        """The folder inside the package (`""` when none is given)."""
        return self.value.strip("/").partition("/")[2]


def parse_model_reference(model: str) -> ModelReference:
    """Classify a model string of a profile (see the module docstring)."""
    if model == TINY_RANDOM:
        return ModelReference("tiny-random", model)
    if model.startswith(PACKAGE_PREFIX):
        return ModelReference("package", model.removeprefix(PACKAGE_PREFIX))
    if model.startswith(("/", "~")):
        # os.path, not Path: a `~user` of no user stays as it is (the profile check refuses it) instead of raising.
        return ModelReference("path", os.path.expanduser(model))  # noqa: PTH111
    return ModelReference("hub", model)


def hub_snapshot(
    repo_id: str,
    *,
    revision: str | None,
    patterns: Sequence[str],
    cache_dir: Path | None = None,
    local_dir: Path | None = None,
    max_workers: int = 8,
    what: str = "model",
) -> Path:
    """Download the files of a hub repository that match `patterns` (resumable; reused when complete).

    `HF_TOKEN` and `HF_HOME` are honoured by huggingface_hub as usual.

    Args:
        repo_id: Hub id, e.g. `Qwen/Qwen3-4B`.
        revision: Branch, tag or commit (None: the default branch).
        patterns: File patterns to fetch (weights, config, tokenizer).
        cache_dir: Download into the hub cache under this folder (the files are shared by later calls).
        local_dir: Download into this folder instead.
        max_workers: Files fetched in parallel.
        what: What the model is, for the message.

    Returns:
        The folder holding the files.

    Raises:
        DownloadError: The hub is unreachable (or offline mode is on), the id is unknown or gated
            without a token, and the files are not there already.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=str(cache_dir) if cache_dir is not None else None,
                local_dir=str(local_dir) if local_dir is not None else None,
                allow_patterns=list(patterns),
                max_workers=max_workers,
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise DownloadError(
            f"cannot download {what} {repo_id!r} (revision {revision or 'default'}) from the model hub: {exc}"
        ) from exc
