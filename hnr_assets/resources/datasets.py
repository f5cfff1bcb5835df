"""Dataset sources: the local mirror, local folders, and the official download."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from hnr_assets.lib.data.sources import ResolvedSource, resolve_dataset
from hnr_assets.profiles.schema import DatasetSpec


class DatasetSourcesResource(dg.ConfigurableResource):
    """Finds BEIR-layout dataset folders: mirror first, then the profile's path, then the download."""

    mirror_dir: str | None = Field(default=None, description="HNR_DATASETS_DIR: folder of dataset folders.")
    cache_dir: str = Field(description="Downloads and extracted archives (under the data root).")

    def resolve(self, spec: DatasetSpec) -> ResolvedSource:
        return resolve_dataset(
            spec.name,
            mirror=Path(self.mirror_dir) if self.mirror_dir else None,
            folder=spec.path,
            url=spec.url,
            md5=spec.md5,
            cache_dir=Path(self.cache_dir),
        )
