"""Shared fixtures and helpers: a tiny dataset mirror, test-profile settings, materializing one asset on a
real (ephemeral) Dagster instance and reading back its metadata and checks."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from hnr_assets.settings import Settings
from hnr_assets_tests.fixtures import make_tiny_dataset

# The read-only collections: `HNR_DATASETS_DIR` when set (a worktree elsewhere), else ../shared/datasets.
SHARED_DATASETS = Path(
    os.environ.get("HNR_DATASETS_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)


def materialize(
    defs: dg.Definitions,
    asset: str,
    partition: str | None = None,
    instance: dg.DagsterInstance | None = None,
    *,
    resources: dict | None = None,
    **kwargs,
) -> dg.ExecuteInProcessResult:
    """One asset (partition) of `defs`, with its resources (some replaced by `resources`), in this process.

    Args:
        defs: The definitions (`build_defs(settings)`).
        asset: The asset to materialize.
        partition: Its partition key (None: unpartitioned).
        instance: The Dagster instance (default: a fresh ephemeral one).
        resources: Resources that replace those of `defs` (e.g. another MLflow store).
        **kwargs: Passed to `dg.materialize` (`run_config`, `raise_on_error`, ...).
    """
    return dg.materialize(
        defs.assets,
        selection=[asset],
        partition_key=partition,
        resources={**defs.resources, **(resources or {})},
        instance=instance or dg.DagsterInstance.ephemeral(),
        **kwargs,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    """The metadata values of the asset's one materialization in `result`."""
    (mat,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in mat.metadata.items()}


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
