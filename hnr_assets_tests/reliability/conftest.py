"""Fixtures of the reliability tests: a fake generator server, and one audited pipeline run per session.

`seeded` runs the whole pipeline once, in a child process under `strace`, with hostile-but-valid names
and secrets in the environment (`test_pipeline_audit.py` inspects what it wrote and logged). Its data
root is then the reference every crash test compares with: the outputs of an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest

from hnr_assets.cli import init_dagster_home
from hnr_assets.definitions import build_defs
from hnr_assets.settings import Settings
from hnr_assets_tests.conftest import materialize as shared_materialize
from hnr_assets_tests.fixtures import make_tiny_dataset
from hnr_assets_tests.openai_server import FakeOpenAIServer
from hnr_assets_tests.reliability.harness import (
    DATASETS,
    GENERATOR,
    MATERIALIZE,
    PAUSE_PRELUDE,
    PROFILE,
    RECIPE,
    Zygote,
    child_env,
    hostile_copy,
    rel_profile,
)

# System calls that create, change or remove a file system entry (traced in the seeded run).
WRITE_CALLS = (
    "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,"
    "unlink,unlinkat,rmdir,truncate"
)


def scores_key(system: str, dataset: str) -> str:
    return str(dg.MultiPartitionKey({"system": system, "dataset": dataset}))


SEED_STEPS: list[tuple[str, str | None]] = [
    *(("datasets", d) for d in DATASETS),
    ("training_pairs", None),
    ("bm25_index", None),
    ("bm25_negatives", None),
    ("cross_encoder", None),
    ("ce_negatives", None),
    ("bm25_scores", DATASETS[0]),
    ("generator_models", GENERATOR),
    ("llm_negatives", GENERATOR),
    ("llm_negatives_ce_scores", GENERATOR),
    ("base_encoder", None),
    ("training_sets", RECIPE),
    ("encoders", RECIPE),
    ("scores", scores_key(RECIPE, DATASETS[0])),
    ("scores", scores_key("base-encoder", DATASETS[1])),
    ("scores", scores_key("bm25-retrieval", DATASETS[0])),
    ("results", None),
]


@dataclass
class Seeded:
    """A data root with every asset of `SEED_STEPS` materialized once, and what the run left."""

    profile: Path
    mirror: Path
    data_dir: Path
    server: FakeOpenAIServer
    sandbox: Path = Path()
    cwd: Path = Path()
    traces: Path = Path()
    tokens: dict[str, str] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)

    @property
    def root(self) -> Path:
        """`<data root>/<profile>`."""
        return self.data_dir / PROFILE

    def env(self, data_dir: Path, **extra: str) -> dict[str, str]:
        return child_env(self.profile, data_dir, self.mirror, **extra)

    def settings(self, data_dir: Path) -> Settings:
        return Settings.from_env(self.env(data_dir))


def materialize(settings: Settings, asset: str, partition=None, **kwargs) -> dg.ExecuteInProcessResult:
    """One asset (partition) in this process, on an ephemeral instance, with torch on one thread.

    One thread as in the seed's child (`OMP_NUM_THREADS=1`): float reductions split over two threads
    sum in another order, and a retrained tiny encoder would then differ from the reference in its last bits.
    """
    import torch

    defs = build_defs(settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return shared_materialize(defs, asset, partition, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fake_server():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def seeded(tmp_path_factory, fake_server) -> Seeded:
    """The pipeline once, in a child process under `strace -ff`, with secrets set; fails if anything fails."""
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: `make system-deps` installs it (Debian package strace)")
    base = tmp_path_factory.mktemp("reliability-seed")
    mirror = base / "mirror"
    for i, name in enumerate(DATASETS):
        plain = make_tiny_dataset_folder(base / "plain" / name, seed=i + 1, prefix="d" if i == 0 else "b")
        hostile_copy(plain, mirror / name, tag=f"t{i}")
    profile = rel_profile(base, fake_server.url)
    seeded = Seeded(
        profile=profile,
        mirror=mirror,
        data_dir=base / "data",
        server=fake_server,
        sandbox=base / "tmp",
        cwd=base / "cwd",
        traces=base / "strace",
    )
    for folder in (seeded.sandbox / "home", seeded.cwd, seeded.traces):
        folder.mkdir(parents=True)
    seeded.tokens = {
        "HNR_GENERATOR_API_KEY": f"hnr-gen-{uuid.uuid4().hex}",
        "OPENAI_API_KEY": f"sk-openai-{uuid.uuid4().hex}",
        "HF_TOKEN": f"hf_{uuid.uuid4().hex}",
        "HUGGING_FACE_HUB_TOKEN": f"hf_hub_{uuid.uuid4().hex}",
    }
    env = seeded.env(
        seeded.data_dir,
        HOME=str(seeded.sandbox / "home"),
        TMPDIR=str(seeded.sandbox),
        DAGSTER_HOME=str(init_dagster_home(seeded.data_dir / "dagster")),
        HF_HUB_OFFLINE="1",
        **seeded.tokens,
    )
    argv = [
        *("strace", "--seccomp-bpf", "-ff", "-qq", "-y", "-s", "4096", "-e", f"trace={WRITE_CALLS}"),
        *("-o", str(seeded.traces / "t")),
        *(sys.executable, "-c", PAUSE_PRELUDE + MATERIALIZE, json.dumps(SEED_STEPS)),
    ]
    seeded.outputs = [base / "stdout.txt", base / "stderr.txt"]
    before = len(fake_server.requests)
    with seeded.outputs[0].open("wb") as out, seeded.outputs[1].open("wb") as err:
        proc = subprocess.run(argv, cwd=seeded.cwd, env=env, stdout=out, stderr=err, timeout=900, check=False)
    assert proc.returncode == 0, seeded.outputs[1].read_text(errors="replace")[-6000:]
    seeded.requests = fake_server.requests[before:]
    return seeded


def make_tiny_dataset_folder(folder: Path, **kwargs) -> Path:
    make_tiny_dataset(folder, **kwargs)
    return folder


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    """A pre-imported process that forks the children the tests kill (see `harness.Zygote`)."""
    folder = tmp_path_factory.mktemp("zygote")
    env = {"HNR_PROFILE": "test", "HNR_DATA_DIR": str(folder / "data"), "OMP_NUM_THREADS": "1"}
    process = Zygote(env, folder / "zygote.log")
    yield process
    process.close()
