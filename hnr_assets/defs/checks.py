"""Helpers for asset checks evaluated inside the asset that writes the output.

Checks are declared with the asset (`Check`, through `execution.hnr_asset`) and their results returned
with the materialization, so they run per partition on exactly the files just written; blocking ones
stop downstream assets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg


@dataclass(frozen=True)
class Check:
    """An asset check as an asset declares it; `hnr_asset` turns it into a `dg.AssetCheckSpec`.

    Attributes:
        name: Check name.
        description: What it checks.
        blocking: A failure stops downstream assets (contract); otherwise a WARN quality gate.
    """

    name: str
    description: str = ""
    blocking: bool = True

    def spec(self, asset: str) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.name, asset=asset, blocking=self.blocking, description=self.description or None)


def contract(description: str, name: str = "contract") -> Check:
    """A blocking check: the stored output honours its contract."""
    return Check(name, description, blocking=True)


def quality(name: str, description: str) -> Check:
    """A non-blocking quality gate (reported with WARN severity when it fails)."""
    return Check(name, description, blocking=False)


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


def negative_set_checks(min_full_share: float) -> list[Check]:
    """The checks every negative set carries (factory: one family, every source).

    Blocking: `schema`, `not_positive`, `distinct`. WARN: `full_coverage` below `min_full_share`.
    """
    return [
        contract("Negatives follow the shared long-format schema, no empty text.", "schema"),
        contract("No negative equals its positive (by id or normalised text).", "not_positive"),
        contract("The negatives of a pair are distinct (by id and normalised text).", "distinct"),
        quality("full_coverage", f"At least {min_full_share:.0%} of the training pairs have a full set of negatives."),
    ]


def negative_set_check_results(negatives, pairs, min_full_share: float) -> list[dg.AssetCheckResult]:
    """Evaluate `negative_set_checks` on a stored negative set and the training pairs."""
    from hnr_assets.lib.mining.negatives import coverage, validate_negatives

    problems = validate_negatives(negatives)
    results = [problems_result(name, problems[name]) for name in ("schema", "not_positive", "distinct")]
    results[0] = problems_result("schema", problems["schema"] + problems["ranks"])
    cov = coverage(negatives, pairs)
    low = cov["full_share"] < min_full_share
    results.append(
        problems_result(
            "full_coverage",
            [f"{cov['full_share']:.1%} of pairs have a full set (< {min_full_share:.0%})"] if low else [],
            severity=dg.AssetCheckSeverity.WARN,
            full_share=round(float(cov["full_share"]), 4),
            partial=int(cov["partial"]),
            none=int(cov["none"]),
        )
    )
    return results
