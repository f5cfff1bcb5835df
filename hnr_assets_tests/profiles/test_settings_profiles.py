"""Settings from the environment and profile validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.profiles import ProfileError, load_profile
from hnr_assets.settings import BUILTIN_PROFILES_DIR, PROJECT_ROOT, Settings, builtin_profiles


def test_defaults(tmp_path: Path) -> None:
    s = Settings.from_env({})
    assert s.profile == "local"
    assert s.data_dir == PROJECT_ROOT / "data"
    assert s.datasets_dir is None
    assert s.mlflow_tracking_uri == f"sqlite:///{PROJECT_ROOT / 'data' / 'mlflow' / 'mlflow.db'}"


def test_env_overrides(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "HNR_PROFILE": "paper",
            "HNR_DATA_DIR": str(tmp_path / "d"),
            "HNR_DATASETS_DIR": str(tmp_path),
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        }
    )
    assert (s.profile, s.data_dir, s.datasets_dir, s.mlflow_tracking_uri) == (
        "paper",
        tmp_path / "d",
        tmp_path,
        "http://127.0.0.1:5000",
    )


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"HNR_PROFILE='papr' is not a profile; choose one of local, paper, test"):
        Settings.from_env({"HNR_PROFILE": "papr"})


def test_missing_mirror_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HNR_DATASETS_DIR=.* is not a folder"):
        Settings.from_env({"HNR_DATASETS_DIR": str(tmp_path / "nope")})


@pytest.mark.parametrize("name", builtin_profiles())
def test_builtin_profiles_load(name: str) -> None:
    profile = load_profile(BUILTIN_PROFILES_DIR / f"{name}.yaml")
    assert profile.name == name


def test_paper_profile_has_the_ten_beir_datasets_with_checksums() -> None:
    profile = load_profile(BUILTIN_PROFILES_DIR / "paper.yaml")
    assert profile.dataset_names == [
        "scifact",
        "nfcorpus",
        "arguana",
        "scidocs",
        "fiqa",
        "trec-covid",
        "quora",
        "nq",
        "hotpotqa",
        "fever",
    ]
    assert all(d.url and d.md5 for d in profile.datasets)
    assert profile.training_pairs.dataset.md5 == "444067daf65d982533ea17ebd59501e4"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    return path


BASE = "name: custom\ndatasets:\n  - name: a\ntraining_pairs:\n  dataset: {name: a}\n"


def test_custom_profile_file_via_env(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    s = Settings.from_env({"HNR_PROFILE": str(path)})
    assert load_profile(s.profile_path).name == "custom"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "trainig: {}\n", "key 'trainig': unknown key"),
        (BASE.replace("- name: a", "- name: a\n    nmae: b"), "key 'datasets.0.nmae': unknown key"),
        (
            BASE.replace("- name: a", "- name: ../etc"),
            "key 'datasets.0.name': Value error, invalid dataset name '../etc'",
        ),
        (BASE.replace("- name: a", "- name: a\n  - name: a"), "dataset names must be unique; repeated: a"),
        (BASE + "  max_pairs: -3\n", "key 'training_pairs.max_pairs': Input should be greater than 0"),
        ("name: custom\n", "key 'datasets': Field required"),
        ("- a\n- b\n", "a profile is a mapping of sections, got list"),
        ("name: [unclosed\n", "custom.yaml:2: invalid YAML"),
    ],
    ids=[
        "unknown top key",
        "unknown nested key",
        "path in name",
        "duplicate dataset",
        "bad value",
        "missing",
        "list",
        "bad yaml",
    ],
)
def test_profile_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProfileError) as err:
        load_profile(_write(tmp_path, text))
    assert str(err.value).startswith(f"{tmp_path / 'custom.yaml'}")
    assert message in str(err.value)


def test_relative_dataset_path_is_relative_to_the_profile(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("- name: a", "- name: a\n    path: data/a"))
    assert load_profile(path).datasets[0].path == tmp_path / "data" / "a"
