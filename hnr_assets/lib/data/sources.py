"""Where a dataset comes from: the local mirror, a local folder, or the official download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hnr_assets.lib.data.download import download, extract_zip
from hnr_assets.lib.runtime.errors import SourceNotFoundError
from hnr_assets.lib.runtime.io import check_safe_name


@dataclass(frozen=True)
class ResolvedSource:
    """A BEIR-layout folder and how it was found (`mirror`, `folder` or `download`)."""

    folder: Path
    kind: str
    detail: str


def resolve_dataset(
    name: str,
    *,
    mirror: Path | None,
    folder: Path | None,
    url: str | None,
    md5: str | None,
    cache_dir: Path,
) -> ResolvedSource:
    """Find a dataset folder, in order: `mirror/<name>`, `folder`, then download `url` into `cache_dir`.

    Args:
        name: Dataset name (also the folder name in the mirror).
        mirror: The local mirror (`HNR_DATASETS_DIR`), or None.
        folder: An explicit local folder from the profile, or None.
        url: Download URL of a zip archive, or None.
        md5: Its published md5, or None.
        cache_dir: Where archives and extracted folders are kept (under the data root).

    Raises:
        SourceNotFoundError: No source has it.
    """
    check_safe_name(name, "dataset name")
    tried = []
    if mirror is not None:
        candidate = Path(mirror) / name
        if candidate.is_dir():
            return ResolvedSource(candidate, "mirror", str(candidate))
        tried.append(f"mirror {candidate} (absent)")
    if folder is not None:
        if Path(folder).is_dir():
            return ResolvedSource(Path(folder), "folder", str(folder))
        tried.append(f"folder {folder} (absent)")
    if url:
        extracted = cache_dir / "sources" / name
        if (extracted / "corpus.jsonl").is_file():
            return ResolvedSource(extracted, "download", url)
        archive = download(url, cache_dir / "downloads" / f"{name}.zip", md5)
        extract_zip(archive, extracted)
        return ResolvedSource(extracted, "download", url)
    tried.append("no download URL")
    raise SourceNotFoundError(f"dataset {name!r} not found: tried {'; '.join(tried)}")
