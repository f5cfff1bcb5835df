"""Stage 1: evaluation datasets and training pairs."""

from hnr_assets.defs.datasets.assets import build_defs

__all__ = ["build_defs"]
