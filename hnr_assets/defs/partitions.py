"""Partition definitions, derived from the active profile."""

from __future__ import annotations

import dagster as dg

from hnr_assets.profiles.schema import Profile


def dataset_partitions(profile: Profile) -> dg.StaticPartitionsDefinition:
    """One partition per evaluation dataset; the key is the dataset name."""
    return dg.StaticPartitionsDefinition(profile.dataset_names)
