"""Stage 4: training sets per recipe, the base encoder, and one encoder per recipe tracked in MLflow."""

from hnr_assets.defs.training.assets import build_defs

__all__ = ["build_defs"]
