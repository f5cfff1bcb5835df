"""Stage: LLM-written hard negatives (generator models and `llm_negatives`, one partition per generator)."""

from hnr_assets.defs.generation.assets import build_defs

__all__ = ["build_defs"]
