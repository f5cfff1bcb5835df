"""Process-wide settings, read from the environment in this one place.

- `HNR_PROFILE`: `paper`, `local`, `test`, or the path of a profile YAML file (default `local`).
- `HNR_DATA_DIR`: runtime root for the Dagster home, MLflow store, models and Parquet outputs
  (default `<project root>/data`).
- `HNR_DATASETS_DIR`: a local mirror, i.e. a folder of BEIR-layout dataset folders, looked up first by
  dataset name (default: no mirror).
- `MLFLOW_TRACKING_URI`: MLflow tracking server or store (default: SQLite under the data root).
- `HNR_MLFLOW_UI_URL`: base URL of the MLflow UI for links in Dagster metadata (default: the tracking
  URI when it is a server, else `http://127.0.0.1:5000`, where `make mlflow` listens).
- `HNR_GENERATOR_API_KEY` (else `OPENAI_API_KEY`): bearer token for OpenAI-compatible generator endpoints
  (default: none). It is handed to Dagster as an environment-variable reference, so the UI shows the
  variable's name, never the value.
- `OPENAI_BASE_URL`: endpoint of the `openai` generator backend for generators whose profile entry has no
  `endpoint` (the compose deployment sets it to its vLLM service; default: none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hnr_assets.lib.runtime.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "local"
GENERATOR_API_KEY_VARS = ("HNR_GENERATOR_API_KEY", "OPENAI_API_KEY")
GENERATOR_BASE_URL_VAR = "OPENAI_BASE_URL"


def _default_data_dir() -> Path:
    """`data/` beside `pyproject.toml` for a source checkout, else under the user's home."""
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / "data"
    return Path.home() / ".hnr" / "data"


@dataclass(frozen=True)
class Settings:
    """Settings of one process, resolved to absolute paths.

    Attributes:
        profile: The profile name (`paper`, `local`, `test`) or the path of a profile YAML file.
        profile_path: The YAML file the profile is read from.
        data_dir: Absolute runtime root.
        datasets_dir: Absolute path of the local dataset mirror, or None.
        mlflow_tracking_uri: Tracking URI handed to MLflow.
        mlflow_ui_url: Base URL of the MLflow UI, for links.
        generator_api_key: Bearer token for OpenAI-compatible generator endpoints ("" for none); kept
            out of `repr`.
        generator_api_key_var: The variable the key came from ("" when none is set).
        generator_base_url: Default endpoint of the `openai` backend ("" for none).
    """

    profile: str
    profile_path: Path
    data_dir: Path
    datasets_dir: Path | None
    mlflow_tracking_uri: str
    mlflow_ui_url: str
    generator_api_key: str = field(default="", repr=False)
    generator_api_key_var: str = ""
    generator_base_url: str = ""

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster"

    @property
    def mlflow_dir(self) -> Path:
        return self.data_dir / "mlflow"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings.

        Args:
            environ: The environment to read; `os.environ` when None.

        Returns:
            The resolved settings.

        Raises:
            ConfigError: A variable names a profile or folder that does not exist.
        """
        env = os.environ if environ is None else environ
        profile = env.get("HNR_PROFILE", "").strip() or DEFAULT_PROFILE
        profile_path = resolve_profile_path(profile)

        data_raw = env.get("HNR_DATA_DIR", "").strip()
        data_dir = Path(data_raw).expanduser().resolve() if data_raw else _default_data_dir()
        if data_dir.exists() and not data_dir.is_dir():
            raise ConfigError(f"HNR_DATA_DIR={data_raw!r} exists and is not a folder")

        mirror_raw = env.get("HNR_DATASETS_DIR", "").strip()
        datasets_dir = None
        if mirror_raw:
            datasets_dir = Path(mirror_raw).expanduser().resolve()
            if not datasets_dir.is_dir():
                raise ConfigError(f"HNR_DATASETS_DIR={mirror_raw!r} is not a folder")

        tracking_uri = env.get("MLFLOW_TRACKING_URI", "").strip()
        if not tracking_uri:
            tracking_uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
        key_var = next((name for name in GENERATOR_API_KEY_VARS if env.get(name, "").strip()), "")
        base_url = env.get(GENERATOR_BASE_URL_VAR, "").strip().rstrip("/")
        if base_url and not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{GENERATOR_BASE_URL_VAR}={base_url!r} is not an http(s) URL")
        ui_url = env.get("HNR_MLFLOW_UI_URL", "").strip()
        if not ui_url:
            ui_url = tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return cls(
            profile=profile,
            profile_path=profile_path,
            data_dir=data_dir,
            datasets_dir=datasets_dir,
            mlflow_tracking_uri=tracking_uri,
            mlflow_ui_url=ui_url,
            generator_api_key=env.get(key_var, "").strip() if key_var else "",
            generator_api_key_var=key_var,
            generator_base_url=base_url,
        )


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped in `hnr_assets/profiles/`."""
    return sorted(p.stem for p in BUILTIN_PROFILES_DIR.glob("*.yaml"))


def resolve_profile_path(profile: str) -> Path:
    """Map `HNR_PROFILE` to a YAML file: a built-in name or a path ending in `.yaml`/`.yml`.

    Raises:
        ConfigError: Neither a built-in profile nor an existing YAML file.
    """
    if profile.endswith((".yaml", ".yml")):
        path = Path(profile).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"HNR_PROFILE={profile!r}: no such profile file")
        return path
    names = builtin_profiles()
    if profile not in names:
        raise ConfigError(
            f"HNR_PROFILE={profile!r} is not a profile; choose one of {', '.join(names)} "
            "or give the path of a profile YAML file"
        )
    return BUILTIN_PROFILES_DIR / f"{profile}.yaml"
