"""Helpers for asset checks evaluated inside the asset that writes the output.

Checks are declared with `check_specs` and their results returned with the materialization, so they
run per partition on exactly the files just written; blocking ones stop downstream assets.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg


def contract_spec(asset: str, name: str = "contract", description: str = "") -> dg.AssetCheckSpec:
    """A blocking check: the stored output honours its contract."""
    return dg.AssetCheckSpec(name, asset=asset, blocking=True, description=description or None)


def quality_spec(asset: str, name: str, description: str = "") -> dg.AssetCheckSpec:
    """A non-blocking quality gate (reported with WARN severity when it fails)."""
    return dg.AssetCheckSpec(name, asset=asset, blocking=False, description=description or None)


def problems_result(
    name: str, problems: Sequence[str], severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR, **metadata
) -> dg.AssetCheckResult:
    """A check result from a list of problems: passed when the list is empty."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=not problems,
        severity=severity,
        metadata={"problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"), **metadata},
    )
