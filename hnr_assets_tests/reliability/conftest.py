"""Fixtures of the reliability tests: a fake generator server and a data root seeded once per session.

The seeded root holds every asset the crash tests need, materialized once without interruption in this
process: these are the reference outputs a killed-and-resumed run must reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from hnr_assets.definitions import build_defs
from hnr_assets.settings import Settings
from hnr_assets_tests.fixtures import make_tiny_dataset
from hnr_assets_tests.openai_server import FakeOpenAIServer
from hnr_assets_tests.reliability.harness import GENERATOR, PROFILE, Zygote, child_env, rel_profile

RECIPE = f"llm-{GENERATOR}+bm25"
SEED_STEPS: list[tuple[str, str | None]] = [
    ("datasets", "tiny-a"),
    ("datasets", "tiny-b"),
    ("training_pairs", None),
    ("bm25_index", None),
    ("bm25_negatives", None),
    ("cross_encoder", None),
    ("ce_negatives", None),
    ("generator_models", GENERATOR),
    ("llm_negatives", GENERATOR),
    ("base_encoder", None),
    ("training_sets", RECIPE),
    ("encoders", RECIPE),
    ("scores", dg.MultiPartitionKey({"system": "base-encoder", "dataset": "tiny-a"})),
]


@dataclass
class Seeded:
    """A data root with every asset of `SEED_STEPS` materialized once, and how to reach it."""

    profile: Path
    mirror: Path
    data_dir: Path
    server: FakeOpenAIServer

    @property
    def root(self) -> Path:
        """`<data root>/<profile>`."""
        return self.data_dir / PROFILE

    def env(self, data_dir: Path, **extra: str) -> dict[str, str]:
        return child_env(self.profile, data_dir, self.mirror, **extra)

    def settings(self, data_dir: Path) -> Settings:
        return Settings.from_env(self.env(data_dir))


def materialize(settings: Settings, asset: str, partition=None, **kwargs) -> dg.ExecuteInProcessResult:
    """One asset (partition) in this process, on an ephemeral instance."""
    defs = build_defs(settings)
    return dg.materialize(
        defs.assets,
        selection=[asset],
        partition_key=partition,
        resources=defs.resources,
        instance=kwargs.pop("instance", None) or dg.DagsterInstance.ephemeral(),
        **kwargs,
    )


@pytest.fixture(scope="session")
def fake_server():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def seeded(tmp_path_factory, fake_server) -> Seeded:
    import torch

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("reliability-seed")
    make_tiny_dataset(base / "mirror" / "tiny-a", seed=1)
    make_tiny_dataset(base / "mirror" / "tiny-b", seed=2, prefix="b")
    profile = rel_profile(base, fake_server.url)
    seeded = Seeded(profile=profile, mirror=base / "mirror", data_dir=base / "data", server=fake_server)
    settings = seeded.settings(seeded.data_dir)
    defs = build_defs(settings)
    instance = dg.DagsterInstance.ephemeral()
    for asset, partition in SEED_STEPS:
        result = dg.materialize(
            defs.assets,
            selection=[asset],
            partition_key=partition,
            resources=defs.resources,
            instance=instance,
        )
        assert result.success, (asset, partition)
    return seeded


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    """A pre-imported process that forks the children the tests kill (see `harness.Zygote`)."""
    folder = tmp_path_factory.mktemp("zygote")
    env = {"HNR_PROFILE": "test", "HNR_DATA_DIR": str(folder / "data"), "OMP_NUM_THREADS": "1"}
    process = Zygote(env, folder / "zygote.log")
    yield process
    process.close()
