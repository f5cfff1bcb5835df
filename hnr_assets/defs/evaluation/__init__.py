"""Stage 5: scores per system × dataset, and the study's results table."""

from hnr_assets.defs.evaluation.assets import build_defs

__all__ = ["build_defs"]
