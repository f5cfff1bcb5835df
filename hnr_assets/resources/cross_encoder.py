"""The cross-encoder runtime as a resource: fetches the profile's model and loads scorers for it.

The scoring code is Dagster-free (`hnr_assets.lib.mining.cross_encoder`); other stages (e.g. filtering LLM
negatives) can call `hnr_assets.lib.mining.cross_encoder.load_cross_encoder` on the `cross_encoder` folder directly.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from hnr_assets.lib.mining.cross_encoder import CrossEncoderScorer, fetch_cross_encoder, load_cross_encoder
from hnr_assets.profiles.schema import CrossEncoderSettings


class CrossEncoderResource(dg.ConfigurableResource):
    """Where the model comes from and how it runs (ONNX with onnxruntime, or PyTorch)."""

    model: str = Field(description="Hub id, package:<dist>/<folder>, absolute folder, or tiny-random.")
    revision: str | None = Field(default=None, description="Hub revision.")
    max_length: int = Field(default=256, description="Tokens per pair.")
    batch_size: int = Field(default=32, description="Pairs per forward pass.")
    threads: int = Field(default=0, description="CPU threads (0: runtime default).")
    bf16: bool = Field(default=False, description="bfloat16 autocast (PyTorch models).")
    trust_remote_code: bool = Field(default=False, description="Run Python code the model ships (PyTorch models).")

    def fetch(self, target: Path, log=None) -> dict:
        """Download, copy or build the model into `target`; returns its manifest."""
        return fetch_cross_encoder(
            self.model,
            target,
            revision=self.revision,
            max_length=self.max_length,
            batch_size=self.batch_size,
            log=log or (lambda _m: None),
        )

    def load(self, model_dir: Path) -> CrossEncoderScorer:
        """A scorer for the model in `model_dir`, with this resource's runtime settings."""
        return load_cross_encoder(
            model_dir,
            max_length=self.max_length,
            batch_size=self.batch_size,
            threads=self.threads,
            bf16=self.bf16,
            trust_remote_code=self.trust_remote_code,
        )


def cross_encoder_resource(settings: CrossEncoderSettings) -> CrossEncoderResource:
    """The resource of a profile's `cross_encoder` section (the section's fields are the resource's)."""
    return CrossEncoderResource(**settings.model_dump())
