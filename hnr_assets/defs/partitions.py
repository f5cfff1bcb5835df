"""Partition definitions, derived from the active profile."""

from __future__ import annotations

import dagster as dg

from hnr_assets.lib.training.recipes import BASELINE_SYSTEMS, Recipe
from hnr_assets.profiles.schema import Profile


def dataset_partitions(profile: Profile) -> dg.StaticPartitionsDefinition:
    """One partition per evaluation dataset; the key is the dataset name."""
    return dg.StaticPartitionsDefinition(profile.dataset_names)


def generator_partitions(profile: Profile) -> dg.StaticPartitionsDefinition:
    """One partition per LLM generator; the key is the generator key."""
    return dg.StaticPartitionsDefinition(profile.generator_keys)


def recipes(profile: Profile) -> list[Recipe]:
    """The recipes of the profile: its generators' grid (`lib.training.recipes`), narrowed by `training.recipes`."""
    return profile.recipes


def recipe_partitions(profile: Profile) -> dg.StaticPartitionsDefinition:
    """One partition per training recipe."""
    return dg.StaticPartitionsDefinition([r.key for r in recipes(profile)])


def system_keys(profile: Profile) -> list[str]:
    """Scored systems: the two baselines, then every recipe's encoder."""
    return [*BASELINE_SYSTEMS, *(r.key for r in recipes(profile))]


def system_dataset_partitions(profile: Profile) -> dg.MultiPartitionsDefinition:
    """Two dimensions for `scores`: `system` (baselines + recipes) × `dataset`."""
    return dg.MultiPartitionsDefinition(
        {
            "system": dg.StaticPartitionsDefinition(system_keys(profile)),
            "dataset": dataset_partitions(profile),
        }
    )


# The partitions definition of each partition axis of `execution.POLICIES`.
BY_AXIS = {
    "dataset": dataset_partitions,
    "generator": generator_partitions,
    "recipe": recipe_partitions,
    "system×dataset": system_dataset_partitions,
}


def partitions_of(axis: str | None, profile: Profile) -> dg.PartitionsDefinition | None:
    """The partitions definition of a partition axis for `profile` (None: unpartitioned)."""
    return BY_AXIS[axis](profile) if axis else None
