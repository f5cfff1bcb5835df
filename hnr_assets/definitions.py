"""The one entry point: assets, checks, jobs, the automation sensor and resources of the active profile.

`dagster dev` (through `workspace.yaml`) and `make demo` load `defs` from here. Settings come from the
environment (`hnr_assets.settings`); heavy libraries are imported only inside the assets that use them,
so loading takes seconds and needs no GPU, JVM or network.
"""

from __future__ import annotations

import dagster as dg

from hnr_assets.defs import datasets, evaluation, generation, jobs, mining, training
from hnr_assets.profiles import Profile, load_profile
from hnr_assets.resources.bm25 import bm25_resource
from hnr_assets.resources.cross_encoder import cross_encoder_resource
from hnr_assets.resources.datasets import DatasetSourcesResource
from hnr_assets.resources.generators import (
    CTranslate2Backend,
    GeneratorBackendsResource,
    OpenAIBackend,
    TransformersBackend,
    VllmBackend,
)
from hnr_assets.resources.mlflow import MlflowResource
from hnr_assets.resources.storage import StorageResource
from hnr_assets.settings import Settings

# Each stage package exposes build_defs(profile) -> dg.Definitions.
STAGES = (datasets, mining, generation, training, evaluation)


def build_resources(settings: Settings, profile: Profile) -> dict[str, object]:
    """Resources shared by every stage, configured from the settings."""
    return {
        "storage": StorageResource(data_dir=str(settings.data_dir), profile=profile.name),
        "dataset_sources": DatasetSourcesResource(
            mirror_dir=str(settings.datasets_dir) if settings.datasets_dir else None,
            cache_dir=str(settings.data_dir / "cache"),
        ),
        "mlflow": MlflowResource(
            tracking_uri=settings.mlflow_tracking_uri,
            experiment=f"hnr-{profile.name}",
            artifact_location=(
                str(settings.mlflow_dir / "artifacts") if settings.mlflow_tracking_uri.startswith("sqlite:") else ""
            ),
            ui_url=settings.mlflow_ui_url,
            lock_dir=str(settings.mlflow_dir / "locks"),
        ),
        "bm25": bm25_resource(profile.bm25, index_cache_dir=str(settings.data_dir / "cache" / "bm25-indexes")),
        "cross_encoder_runtime": cross_encoder_resource(profile.cross_encoder),
        "generator_backends": GeneratorBackendsResource(
            transformers=TransformersBackend(),
            vllm=VllmBackend(),
            # An environment-variable reference: Dagster resolves it at run time and shows only its name.
            openai=OpenAIBackend(
                api_key=dg.EnvVar(settings.generator_api_key_var) if settings.generator_api_key_var else "",
                base_url=settings.generator_base_url,
            ),
            # Converted models are shared by every profile, as the converted GGUF weights are.
            ctranslate2=CTranslate2Backend(cache_dir=str(settings.data_dir / "models" / "ctranslate2")),
        ),
    }


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    """All definitions for the given settings (the environment's when None)."""
    settings = settings or Settings.from_env()
    profile = load_profile(settings.profile_path)
    stages = dg.Definitions.merge(*(stage.build_defs(profile) for stage in STAGES))
    return dg.Definitions.merge(
        stages,
        jobs.build_defs(stages.assets or []),
        dg.Definitions(resources=build_resources(settings, profile)),
    )


defs = build_defs()
