"""Shared fixtures: a tiny dataset mirror, test-profile settings and definitions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hnr_assets.settings import Settings
from hnr_assets_tests.fixtures import make_tiny_dataset

# The dataset mirror: HNR_DATASETS_DIR (as the Makefile sets it), else ../shared/datasets beside the checkout.
SHARED_DATASETS = Path(
    os.environ.get("HNR_DATASETS_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> Path:
    """A dataset mirror with the `test` profile's datasets `tiny-a` and `tiny-b`."""
    mirror = tmp_path / "mirror"
    make_tiny_dataset(mirror / "tiny-a", seed=1)
    make_tiny_dataset(mirror / "tiny-b", seed=2, prefix="b")
    return mirror


@pytest.fixture
def test_settings(tmp_path: Path, tiny_mirror: Path) -> Settings:
    """Settings of the `test` profile over the tiny mirror, with a fresh data root."""
    return Settings.from_env(
        {
            "HNR_PROFILE": "test",
            "HNR_DATA_DIR": str(tmp_path / "data"),
            "HNR_DATASETS_DIR": str(tiny_mirror),
        }
    )


@pytest.fixture
def shared_datasets() -> Path:
    """The read-only collections beside the checkout (CI has them; their absence is a failure)."""
    if not SHARED_DATASETS.is_dir():
        pytest.fail(f"{SHARED_DATASETS} is missing: clone the project beside ../shared")
    return SHARED_DATASETS
