"""Stage 2: corpus-mined hard negatives (BM25, cross-encoder) and the BM25 baseline scores."""

from hnr_assets.defs.mining.assets import build_defs

__all__ = ["build_defs"]
