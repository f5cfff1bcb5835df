"""Where every asset keeps its files: `<data root>/<profile>/<asset>/<partition...>/`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from hnr_assets.lib.runtime.io import check_safe_name, safe_join


class StorageResource(dg.ConfigurableResource):
    """The data root, split by profile so that profiles never overwrite each other.

    Paths are built only from validated names (asset names, partition keys), so nothing is ever
    written outside the data root.
    """

    data_dir: str = Field(description="Absolute runtime root (HNR_DATA_DIR).")
    profile: str = Field(description="Active profile name; outputs live under `<data_dir>/<profile>/`.")

    @property
    def root(self) -> Path:
        return Path(self.data_dir)

    @property
    def profile_root(self) -> Path:
        return safe_join(self.root, check_safe_name(self.profile, "profile name"))

    def asset_dir(self, asset: str, *partition: str) -> Path:
        """Folder of one asset (and partition): `<data root>/<profile>/<asset>/<partition...>`.

        Args:
            asset: Asset name.
            *partition: Partition key components (one per dimension).
        """
        return safe_join(self.profile_root, asset, *partition)

    def shared_dir(self, *parts: str) -> Path:
        """A folder shared by all profiles (download cache, converted models): `<data root>/<parts>`."""
        return safe_join(self.root, *parts)
