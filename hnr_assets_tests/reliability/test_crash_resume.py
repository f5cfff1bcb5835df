"""Kill -9 in the middle of a materialization, rerun it: nothing lost, nothing doubled, nothing partial.

Each case copies the seeded data root without the asset's output, runs `dg.materialize` of that asset
in a fresh process, and kills the process with SIGKILL at a pause point inside the asset's work (a
Parquet or NumPy file half written into its temporary folder, or training just finished). Then:

- a reader sees no partial file: every visible file of the data root parses, the asset's final files
  do not exist yet, and the cut-off write sits in a hidden temporary sibling;
- the rerun (in this process) succeeds, removes the stale temporary, and its output is complete,
  has no duplicate rows, and equals the uninterrupted run of the seed (content hashes);
- MLflow keeps no RUNNING run.

The existing kill tests cover what is not repeated here: the shard store at the library level
(`lib/generation/test_generation.py`, with request counts) and the MLflow run and registered version of a killed
training (`defs/test_training.py`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hnr_assets.lib.evaluation.scores import METRICS
from hnr_assets.settings import Settings
from hnr_assets_tests.reliability.conftest import Seeded, materialize
from hnr_assets_tests.reliability.harness import (
    DATASETS,
    GENERATOR,
    PROFILE,
    RECIPE,
    copy_root,
    duplicated,
    files_fingerprint,
    frames_fingerprint,
    json_without,
    kill_at,
    tmp_leftovers,
    unreadable,
    visible_files,
)

SCORES_KEY = dg.MultiPartitionKey({"system": "base-encoder", "dataset": DATASETS[1]})
PAIRS = 24  # training pairs of the tiny mirror


def _index_content(folder: Path) -> dict:
    index = folder / "index"
    files = sorted(p.relative_to(index).as_posix() for p in index.rglob("*") if p.is_file())
    return {
        "files": files_fingerprint(index, files),
        "manifest": json_without(folder / "manifest.json", "seconds", "corpus"),
    }


def _negatives_content(names: tuple[str, ...]) -> Callable[[Path], dict]:
    def content(folder: Path) -> dict:
        negatives = pl.read_parquet(folder / "negatives.parquet")
        assert duplicated(negatives, ["query_id", "positive_id", "negative_rank"]) == 0
        assert duplicated(negatives, ["query_id", "positive_id", "negative"]) == 0
        return frames_fingerprint(folder, names)

    return content


def _encoder_content(folder: Path) -> dict:
    model = folder / "model"
    weights = sorted(p.relative_to(model).as_posix() for p in model.rglob("*.safetensors"))
    training = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    keep = ("recipe", "best_step", "best_validation_score", "base_validation_score", "steps", "evaluations")
    return {"weights": files_fingerprint(model, weights), "training": {k: training[k] for k in keep}}


def _scores_content(folder: Path) -> dict:
    run = pl.read_parquet(folder / "run.parquet")
    assert duplicated(run, ["query_id", "doc_id"]) == 0
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return {
        **frames_fingerprint(folder, ("run.parquet", "per_query.parquet")),
        "metrics": {k: metrics[k] for k in (*METRICS, "queries", "run_rows", "documents")},
    }


@dataclass(frozen=True)
class Case:
    """One kill point: which asset, where its output lives, where the child is paused, how to compare."""

    id: str
    asset: str
    partition: object
    output: str  # relative to <data root>/<profile>
    finals: tuple[str, ...]  # files a reader opens, absent until the asset finishes
    pause: dict
    content: Callable[[Path], dict]
    drop: tuple[str, ...] = ()  # more paths (relative to the data root) removed from the copy
    slow: bool = False
    extra: dict = field(default_factory=dict)


CASES = [
    Case(
        "bm25_index-bm25s",
        "bm25_index",
        None,
        "bm25_index",
        ("manifest.json",),
        {"kind": "write_parquet", "match": ".bm25_index.tmp-", "nth": 1},
        _index_content,
    ),
    Case(
        "bm25_negatives",
        "bm25_negatives",
        None,
        "bm25_negatives",
        ("negatives.parquet", "stats.parquet"),
        {"kind": "write_parquet", "match": ".bm25_negatives.tmp-", "nth": 2},  # negatives written, stats cut
        _negatives_content(("negatives.parquet", "stats.parquet", "retrieval_ranks.parquet")),
    ),
    Case(
        "ce_negatives",
        "ce_negatives",
        None,
        "ce_negatives",
        ("negatives.parquet", "stats.parquet"),
        {"kind": "write_parquet", "match": ".ce_negatives.tmp-", "nth": 1},
        _negatives_content(("negatives.parquet", "stats.parquet")),
    ),
    Case(
        "llm_negatives",
        "llm_negatives",
        GENERATOR,
        f"llm_negatives/{GENERATOR}",
        ("negatives.parquet", "rejections.parquet", "pair_stats.parquet", "summary.json"),
        {"kind": "write_parquet", "match": ".shard-00002.tmp-", "nth": 1},  # 2 of 4 shards done, the third cut
        _negatives_content(("negatives.parquet", "rejections.parquet", "pair_stats.parquet")),
    ),
    Case(
        "encoders",
        "encoders",
        RECIPE,
        f"encoders/{RECIPE}",
        ("training.json",),
        {
            "kind": "after",
            "target": "hnr_assets.lib.training.encoder_training:train_encoder",
        },  # trained, not yet renamed
        _encoder_content,
        slow=True,
    ),
    Case(
        "scores-embedding-cache",
        "scores",
        SCORES_KEY,
        f"scores/base-encoder/{DATASETS[1]}",
        ("run.parquet", "metrics.json"),
        {"kind": "np_save", "match": f".{DATASETS[1]}-corpus-", "nth": 1},  # the corpus matrix cut in the cache
        _scores_content,
        drop=("cache/embeddings",),
        slow=True,
    ),
]


def _params() -> list:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_sigkill_mid_materialization_then_rerun(case: Case, seeded: Seeded, zygote, tmp_path: Path) -> None:
    data_dir = copy_root(seeded.data_dir, tmp_path / "data", drop=(f"{PROFILE}/{case.output}", *case.drop))
    root = data_dir / PROFILE
    output = root / case.output
    requests_before = len(seeded.server.requests)

    partition = str(case.partition) if case.partition else None
    killed = kill_at(seeded.env(data_dir), [(case.asset, partition)], case.pause, tmp_path, zygote=zygote)
    assert killed.returncode == -9, killed.stderr[-2000:]

    # What a reader sees after the kill: no final file of the asset, nothing visible that does not parse,
    # and the cut-off write hidden in a temporary sibling.
    assert not any((output / name).exists() for name in case.finals)
    assert unreadable(data_dir) == []
    left = tmp_leftovers(data_dir)
    assert left, f"the kill at {killed.where} left no temporary sibling"
    assert all(".tmp-" in Path(p).name for p in left)

    requests_killed = len(seeded.server.requests) - requests_before
    result = materialize(seeded.settings(data_dir), case.asset, case.partition)
    assert result.success
    assert tmp_leftovers(data_dir) == []  # the rerun removed what the killed run left
    assert unreadable(data_dir) == []
    assert case.content(output) == case.content(seeded.root / case.output)

    if case.asset == "llm_negatives":
        negatives = pl.read_parquet(output / "negatives.parquet")
        assert negatives.select("query_id", "positive_id").n_unique() == PAIRS and negatives.height == PAIRS * 5
        meta = {k: v.value for k, v in result.asset_materializations_for_node("llm_negatives")[0].metadata.items()}
        assert meta["resumed_from_shards"] == 12 and meta["generated_this_run"] == 12  # 2 shards of 6 kept
        # One request per pair: the killed run asked for shards 0-2 (the third one's write was cut), the
        # rerun for the 12 pairs of shards 2-3 only; no pair of a finished shard was asked for again.
        assert requests_killed == 18
        assert len(seeded.server.requests) - requests_before - requests_killed == 12
    if case.asset in ("encoders", "scores"):
        mlflow = build_mlflow(seeded, data_dir)
        assert [r.info.run_id for r in mlflow.find_runs({}, status="RUNNING")] == []
    if case.id == "scores-embedding-cache":
        entries = sorted(p.name.rsplit("-", 1)[0] for p in (data_dir / "cache" / "embeddings").iterdir())
        assert entries == [f"{DATASETS[1]}-corpus", f"{DATASETS[1]}-queries"]


def yaml_bm25(seeded: Seeded, **changes: object) -> dict:
    """The seeded profile's `bm25` section with `changes`."""
    import yaml

    return {**yaml.safe_load(seeded.profile.read_text(encoding="utf-8"))["bm25"], **changes}


def Settings_from(env: dict) -> Settings:
    return Settings.from_env(env)


def build_mlflow(seeded: Seeded, data_dir: Path):
    from hnr_assets.definitions import build_defs

    return build_defs(seeded.settings(data_dir)).resources["mlflow"]


def test_the_seed_outputs_are_complete(seeded: Seeded) -> None:
    """The references the reruns are compared with are themselves whole (else equality would prove little)."""
    root = seeded.root
    for folder, stats in (
        ("bm25_negatives", "stats"),
        ("ce_negatives", "stats"),
        (f"llm_negatives/{GENERATOR}", "pair_stats"),
    ):
        negatives = pl.read_parquet(root / folder / "negatives.parquet")
        per_pair = pl.read_parquet(root / folder / f"{stats}.parquet")
        assert per_pair.height == PAIRS and negatives.height == per_pair["negatives"].sum() > PAIRS * 4, folder
    llm = pl.read_parquet(root / f"llm_negatives/{GENERATOR}/negatives.parquet")
    assert llm.height == PAIRS * 5
    assert json.loads((root / "bm25_index" / "manifest.json").read_text())["documents"] == 48
    assert (root / "encoders" / RECIPE / "model" / "model.safetensors").is_file()
    assert pl.read_parquet(root / "scores" / "base-encoder" / DATASETS[1] / "per_query.parquet").height == 8
    assert visible_files(root)  # and nothing temporary
    assert tmp_leftovers(seeded.data_dir) == []


def _java_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` and whose command line runs Anserini's indexer."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"IndexCollection" in cmdline:
            found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_sigkill_while_lucene_indexes_kills_the_jvm_and_the_rerun_matches(
    seeded: Seeded, zygote, tmp_path: Path
) -> None:
    """The Lucene engine indexes in a child JVM: killing the Python process must not leave it running.

    The JVM is frozen (SIGSTOP) as soon as it appears, so that it cannot finish on its own; the Python
    process is then killed. Without `die_with_parent` the frozen JVM outlived it for good.
    """
    import signal

    from hnr_assets.definitions import build_defs
    from hnr_assets_tests.reliability.harness import MATERIALIZE, PAUSE_PRELUDE, rel_profile

    lucene = yaml_bm25(seeded, backend="pyserini")
    profile = rel_profile(tmp_path, seeded.server.url, bm25=lucene)
    reference = copy_root(seeded.data_dir, tmp_path / "reference", drop=(f"{PROFILE}/bm25_index",))
    data_dir = copy_root(seeded.data_dir, tmp_path / "data", drop=(f"{PROFILE}/bm25_index",))
    env = {**seeded.env(data_dir), "HNR_PROFILE": str(profile)}
    ref_settings = Settings_from({**env, "HNR_DATA_DIR": str(reference)})
    assert materialize(ref_settings, "bm25_index").success

    pid = zygote.spawn(env, [("bm25_index", None)], PAUSE_PRELUDE + MATERIALIZE, tmp_path / "child.log")
    jvm = None
    try:
        deadline = time.monotonic() + 120
        while not jvm and time.monotonic() < deadline and _alive(pid):
            jvm = (_java_children(pid) or [None])[0]
            time.sleep(0.01)
        assert jvm, f"no indexing JVM appeared:\n{(tmp_path / 'child.log').read_text()[-3000:]}"
        os.kill(jvm, signal.SIGSTOP)
        os.kill(pid, signal.SIGKILL)
        assert zygote.wait(pid) == -9
        deadline = time.monotonic() + 10
        while _alive(jvm) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(jvm), "the JVM outlived the killed Python process"
    finally:
        if jvm and _alive(jvm):
            os.kill(jvm, signal.SIGKILL)

    assert not (data_dir / PROFILE / "bm25_index" / "manifest.json").exists()
    assert tmp_leftovers(data_dir)
    settings = Settings_from(env)
    assert materialize(settings, "bm25_index").success
    assert tmp_leftovers(data_dir) == []
    ours, ref = (
        json_without(d / PROFILE / "bm25_index" / "manifest.json", "seconds", "corpus") for d in (data_dir, reference)
    )
    assert ours == ref and ours["backend"] == "pyserini" and ours["documents"] == 48
    # Lucene's files carry segment ids and timestamps; the same index answers the same queries the same way.
    engine = build_defs(settings).resources["bm25"].engine()
    queries = (
        pl.read_parquet(data_dir / PROFILE / "training_pairs" / "pairs.parquet")
        .select("query_id", pl.col("query").alias("text"))
        .unique("query_id", maintain_order=True)
    )
    hits = [engine.search(engine.open(d / PROFILE / "bm25_index"), queries, 10) for d in (data_dir, reference)]
    assert hits[0]["query_id"].n_unique() == queries.height and hits[0].equals(hits[1])
