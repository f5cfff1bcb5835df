"""Issue 14's reproduction on the `local` profile: BM25 mining on SciFact (Lucene), datasets from the mirror.

Through the command line, in a fresh data root, with a copy of the `local` profile edited in place:

1. `demo --select datasets,training_pairs,bm25_index,bm25_negatives,bm25_scores`: everything is materialized;
2. `mining.bm25_negatives.last_rank` 30 -> 10, `demo --select bm25_negatives`: the negatives are rebuilt;
3. `bm25.k1` 0.9 -> 1.5, `demo --select bm25_index,bm25_scores`: the index and every `bm25_scores`
   partition are rebuilt.

Before each rerun the UI (GraphQL `assetNodes`, a code location in its own process, started twice) shows
exactly the edited assets stale; after it, the rerun ones current.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml

from hnr_assets.cli import init_dagster_home, main
from hnr_assets.defs import versions
from hnr_assets.profiles import load_profile
from hnr_assets.settings import BUILTIN_PROFILES_DIR
from hnr_assets_tests.ui_status import ui_stale

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MINING = "datasets,training_pairs,bm25_index,bm25_negatives,bm25_scores"
DATASETS = load_profile(BUILTIN_PROFILES_DIR / "local.yaml").dataset_names  # every bm25_scores partition


def _materializations(home: Path) -> Counter:
    """Materializations per (asset, partition) recorded in the instance under `home`."""
    counts: Counter = Counter()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for name in MINING.split(","):
            for record in instance.fetch_materializations(dg.AssetKey(name), limit=10_000).records:
                counts[(name, record.partition_key)] += 1
    return counts


def _rerun(home: Path, select: str) -> set[tuple[str, str | None]]:
    """Run `cli demo --select <select>` and return what it materialized."""
    before = _materializations(home)
    assert main(["demo", "--select", select]) == 0
    after = _materializations(home)
    return {key for key in after if after[key] > before.get(key, 0)}


def _edit(path: Path, section: str, key: str, value: object) -> None:
    data = yaml.safe_load(path.read_text())
    target = data
    for part in section.split("."):
        target = target[part]
    target[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_the_three_steps_rerun_exactly_the_edited_mining_assets(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    profile = tmp_path / "local.yaml"
    shutil.copyfile(BUILTIN_PROFILES_DIR / "local.yaml", profile)
    home = init_dagster_home(tmp_path / "data" / "dagster")  # what `cli demo` does first
    env = {
        "HNR_PROFILE": str(profile),
        "HNR_DATA_DIR": str(tmp_path / "data"),
        "HNR_DATASETS_DIR": str(shared_datasets),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    def stale() -> dict[str, list[str]]:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return ui_stale(instance, env)

    # 1. Everything the mining stage needs, then an unchanged rerun: all up to date.
    everything = {("datasets", d) for d in DATASETS} | {("bm25_scores", d) for d in DATASETS}
    everything |= {("training_pairs", None), ("bm25_index", None), ("bm25_negatives", None)}
    assert _rerun(home, MINING) == everything
    assert _rerun(home, MINING) == set()
    assert stale() == {}

    # 2. Fewer BM25 ranks for the negatives: only `bm25_negatives` changes.
    _edit(profile, "mining.bm25_negatives", "last_rank", 10)
    assert stale() == {"bm25_negatives": ["has a new code version"]}
    capsys.readouterr()
    assert main(["demo", "--dry-run", "--select", MINING]) == 0
    dry = [line.split() for line in capsys.readouterr().out.splitlines() if "would materialize" in line]
    assert [(words[0], words[1]) for words in dry] == [("bm25_negatives", "-")]
    assert _rerun(home, "bm25_negatives") == {("bm25_negatives", None)}
    assert stale() == {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        mat = instance.fetch_materializations(dg.AssetKey("bm25_negatives"), limit=1).records[0].asset_materialization
    assert mat.metadata["pairs_full"].value > 0 and versions.recorded_hash(mat).startswith("1+")

    # 3. Another k1: the index, the negatives mined from it and the BM25 baseline on every dataset.
    _edit(profile, "bm25", "k1", 1.5)
    edited = {"bm25_index", "bm25_negatives", *(f"bm25_scores[{d}]" for d in DATASETS)}
    first, restarted = stale(), stale()
    assert first == restarted == {name: ["has a new code version"] for name in edited}
    assert _rerun(home, "bm25_index,bm25_scores") == {("bm25_index", None)} | {("bm25_scores", d) for d in DATASETS}
    # `bm25_negatives` was not selected: still stale (its code version, and the index rebuilt below it).
    assert set(stale()) == {"bm25_negatives"}
    assert _rerun(home, MINING) == {("bm25_negatives", None)}
    assert stale() == {}
    assert _rerun(home, MINING) == set()
