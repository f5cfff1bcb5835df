"""docker/: the compose files, the Dagster instance config and the images, checked without a Docker engine.

Nothing here builds an image or starts a container (test_stack.py does, with a real engine). What is
checked: Debian's `docker-compose` (1.29) validates and renders the compose files; the rendered
services are wired to each other and to docker/dagster.yaml and docker/workspace.yaml; dagster.yaml
validates against Dagster's instance schema and the Docker run launcher's own config schema; the GPU
container context is accepted by dagster-docker and docker-py; hadolint lints the Dockerfiles, every file
they COPY exists and passes .dockerignore, and their pins agree with the Makefile; shellcheck lints the
scripts, and the MLflow entry script is run against a stand-in `mlflow` to check what it hands over.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import sqlalchemy
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
ENV_EXAMPLE = DOCKER / "hnr.env.example"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
BIN = Path(sys.executable).parent
PASSWORD = "pw-for-config-only"
# dagster-postgres/dagster-docker 0.29.27 under dagster 1.13.28: known, see docker/requirements-deploy.txt.
LIBRARY_SKEW = pytest.mark.filterwarnings("ignore:Found version mismatch between `dagster-shared`:UserWarning")
SERVICES = {"postgres", "hnr-code", "dagster-webserver", "dagster-daemon", "mlflow", "vllm"}


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is missing: run `make system-deps` (or `make test`), which installs it")
    # A clean environment: only what the test sets, never a developer's docker/.env or shell secrets.
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [exe, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rendered(*files: Path, profile: str | None = None, **env: str) -> dict:
    extra = [a for f in files for a in ("-f", str(f))]
    prof = ["--profile", profile] if profile else []
    result = _compose(*extra, *prof, "config", env={"POSTGRES_PASSWORD": PASSWORD, **env})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    return _rendered()


# ------------------------------------------------------------------------------------------ compose


def test_compose_config_validates() -> None:
    for files in ([], [COMPOSE_GPU]):
        extra = [a for f in files for a in ("-f", str(f))]
        result = _compose(*extra, "--profile", "gpu", "config", "-q", env={"POSTGRES_PASSWORD": PASSWORD})
        assert result.returncode == 0, f"{files}: {result.stderr}"


def test_compose_refuses_to_render_without_a_password() -> None:
    result = _compose("config", "-q")
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in docker/.env" in result.stderr


def test_services_images_and_profiles(config: dict) -> None:
    services = config["services"]
    assert set(services) == SERVICES
    assert {name for name, s in services.items() if s.get("profiles")} == {"vllm"}
    assert services["vllm"]["profiles"] == ["gpu"]
    devices = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    for name in ("hnr-code", "dagster-webserver", "dagster-daemon", "mlflow"):
        assert services[name]["image"] == "hnr:latest", name
    assert services["vllm"]["image"] == "hnr-gpu:latest"
    assert services["hnr-code"]["build"] == {"context": str(REPO_ROOT), "dockerfile": "docker/Dockerfile"}
    assert services["vllm"]["build"] == {"context": str(REPO_ROOT), "dockerfile": "docker/Dockerfile.gpu"}
    for service in services.values():
        if "build" in service:
            assert (Path(service["build"]["context"]) / service["build"]["dockerfile"]).is_file()


def test_published_ports_bind_to_loopback_unless_asked(config: dict) -> None:
    published = {name: s.get("ports", []) for name, s in config["services"].items()}
    assert published["postgres"] == [] and published["hnr-code"] == []
    assert published["dagster-webserver"] == ["127.0.0.1:3000:3000/tcp"]
    assert published["mlflow"] == ["127.0.0.1:5000:5000/tcp"]
    assert published["vllm"] == ["127.0.0.1:8000:8000/tcp"]
    wide = _rendered(HNR_BIND_ADDRESS="0.0.0.0", DAGSTER_PORT="3100")
    assert wide["services"]["dagster-webserver"]["ports"] == ["0.0.0.0:3100:3000/tcp"]


def test_secrets_come_from_the_environment_only(config: dict) -> None:
    # The password reaches containers as environment variables, never through commands or build args.
    for name, service in config["services"].items():
        assert PASSWORD not in json.dumps(service.get("command", "")), name
        assert PASSWORD not in json.dumps(service.get("build", {})), name
    env = config["services"]["dagster-daemon"]["environment"]
    assert env["DAGSTER_POSTGRES_PASSWORD"] == PASSWORD
    assert config["services"]["mlflow"]["environment"]["MLFLOW_DB_PASSWORD"] == PASSWORD
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    template = dict(line.split("=", 1) for line in lines)
    assert template["POSTGRES_PASSWORD"] == "" and template["VLLM_API_KEY"] == "" and template["HF_TOKEN"] == ""
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO_ROOT, check=False)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"


def test_code_location_webserver_daemon_and_workspace_agree(config: dict) -> None:
    services = config["services"]
    code = services["hnr-code"]
    command = code["command"]
    assert command[:3] == ["dagster", "api", "grpc"]
    assert command[command.index("-m") + 1] == "hnr_assets.definitions"
    port = int(command[command.index("-p") + 1])
    assert code["environment"]["DAGSTER_CONTAINER_IMAGE"] == code["image"]
    assert code["healthcheck"]["test"] == ["CMD", "dagster", "api", "grpc-health-check", "-p", str(port)]

    workspace = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["grpc_server"] == {"host": "hnr-code", "port": port, "location_name": "hnr"}

    home = "/opt/dagster/dagster_home"
    for name in ("dagster-webserver", "dagster-daemon"):
        service = services[name]
        assert f"{home}/workspace.yaml" in service["command"], name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        assert mounts[f"{home}/dagster.yaml"] == str(DOCKER / "dagster.yaml")
        assert mounts[f"{home}/workspace.yaml"] == str(DOCKER / "workspace.yaml")
        assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
        assert mounts["/data"] == "hnr_data"
        assert service["depends_on"]["hnr-code"]["condition"] == "service_healthy"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_mlflow_service_runs_one_worker_without_job_execution(config: dict) -> None:
    mlflow = config["services"]["mlflow"]
    assert mlflow["command"] == ["/opt/hnr/docker/mlflow-server.sh"]
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "mlflow:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow_artifacts:/mlflow/artifacts:rw" in mlflow["volumes"]
    assert config["services"]["hnr-code"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    script = (DOCKER / "mlflow-server.sh").read_text()
    assert "--workers 1" in script


def test_openai_backend_points_at_the_vllm_service(config: dict) -> None:
    vllm = config["services"]["vllm"]
    command = vllm["command"]
    assert command[:3] == ["vllm", "serve", "Qwen/Qwen3-4B"]
    assert "--port=8000" in command and "--served-model-name=Qwen/Qwen3-4B" in command
    for name in ("hnr-code", "dagster-daemon"):
        assert config["services"][name]["environment"]["OPENAI_BASE_URL"] == "http://vllm:8000/v1"
    keyed = _rendered(VLLM_API_KEY="k-123")
    assert keyed["services"]["vllm"]["environment"]["VLLM_API_KEY"] == "k-123"
    assert keyed["services"]["dagster-daemon"]["environment"]["OPENAI_API_KEY"] == "k-123"


# ------------------------------------------------------------------------------------------ dagster.yaml


@pytest.fixture
def instance_env(monkeypatch: pytest.MonkeyPatch, config: dict) -> dict:
    """The environment compose gives the daemon, as the process environment."""
    env = config["services"]["dagster-daemon"]["environment"]
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return env


@LIBRARY_SKEW
def test_dagster_yaml_is_a_valid_instance_with_postgres_and_the_docker_launcher(instance_env: dict) -> None:
    from dagster._config import process_config
    from dagster._core.instance.config import ConcurrencyConfig, dagster_instance_config
    from dagster._core.launcher import RunLauncher
    from dagster._core.run_coordinator import RunCoordinator
    from dagster._serdes.config_class import ConfigurableClassData
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage
    from dagster_postgres.storage import DagsterPostgresStorage
    from dagster_postgres.utils import get_conn_string

    raw = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(DOCKER), "dagster.yaml")
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_POSTGRES_HOST"}

    # The storage config validates against every Postgres storage class, env vars resolved.
    for cls in (DagsterPostgresStorage, PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        processed = process_config(cls.config_type(), raw["storage"]["postgres"])
        assert processed.success, (cls.__name__, processed.errors)
    processed = process_config(DagsterPostgresStorage.config_type(), raw["storage"]["postgres"])
    db = processed.value["postgres_db"]
    assert (db["hostname"], db["password"], db["db_name"]) == ("postgres", PASSWORD, "dagster")
    # The URL that dagster-postgres builds loads its driver (create_engine imports it; no connection made).
    engine = sqlalchemy.create_engine(get_conn_string(**db))
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg2")
    engine.dispose()

    launcher = ConfigurableClassData(
        raw["run_launcher"]["module"], raw["run_launcher"]["class"], yaml.safe_dump(raw["run_launcher"]["config"])
    ).rehydrate(as_type=RunLauncher)
    assert launcher.networks == ["hnr_network"]
    assert launcher.container_kwargs["volumes"] == ["hnr_data:/data", "hnr_datasets:/datasets:ro"]
    # Every variable the launcher forwards to run containers is set in the daemon's environment.
    missing = [name for name in launcher.env_vars if name not in instance_env]
    assert missing == []

    coordinator = ConfigurableClassData(
        raw["run_coordinator"]["module"], raw["run_coordinator"]["class"], yaml.safe_dump({})
    ).rehydrate(as_type=RunCoordinator)
    assert type(coordinator).__name__ == "QueuedRunCoordinator"
    # Queue and pool limits (Dagster 1.13 `concurrency`): one `heavy` step at a time, two runs.
    concurrency = ConcurrencyConfig.from_concurrency_settings(config["concurrency"], coordinator.get_run_queue_config())
    assert concurrency.pool_config.default_pool_limit == 1
    assert concurrency.pool_config.pool_granularity.value == "op"
    assert concurrency.run_queue_config.max_concurrent_runs == 2

    for section in ("compute_logs", "local_artifact_storage"):
        assert raw[section]["config"]["base_dir"].startswith("/data/dagster/"), section


def test_names_shared_by_dagster_yaml_and_compose_agree(config: dict) -> None:
    launcher = yaml.safe_load((DOCKER / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert launcher["network"] == config["networks"]["hnr"]["name"]
    volume_names = {v["name"] for v in config["volumes"].values()}
    for mount in launcher["container_kwargs"]["volumes"]:
        assert mount.split(":")[0] in volume_names, mount


@LIBRARY_SKEW
def test_gpu_override_gives_runs_the_gpu_image_and_the_gpus() -> None:
    import docker.types
    from dagster_docker.container_context import DockerContainerContext

    gpu = _rendered(COMPOSE_GPU, profile="gpu")
    code = gpu["services"]["hnr-code"]
    assert code["image"] == code["environment"]["DAGSTER_CONTAINER_IMAGE"] == "hnr-gpu:latest"
    assert code["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    context = DockerContainerContext.create_from_config(json.loads(code["environment"]["DAGSTER_CONTAINER_CONTEXT"]))
    kwargs = context.container_kwargs
    host_config = docker.types.HostConfig(
        version="1.44", device_requests=kwargs["device_requests"], shm_size=kwargs["shm_size"]
    )
    assert host_config["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert host_config["ShmSize"] == 16 * 1024**3


# ------------------------------------------------------------------------------------------ images


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments and parser directives dropped."""
    out, pending = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _dockerignore_allows(relpath: str) -> bool:
    """Whether the build context keeps `relpath` under .dockerignore's rules (last match wins; a pattern
    that matches a parent folder applies to everything inside it)."""
    rules = []
    for raw in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").rstrip("/")))
    parts = relpath.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, pattern in rules:
        for candidate in candidates:
            if fnmatch(candidate, pattern) or (pattern.startswith("**/") and fnmatch(candidate, pattern[3:])):
                included = negate
                break
    return included


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--config", str(REPO_ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files_and_runs_unprivileged(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    stages = [i for i, (kw, _) in enumerate(steps) if kw == "FROM"]
    final = steps[stages[-1] :]
    for keyword, args in steps:
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, _target = [a for a in shlex.split(args) if not a.startswith("--")]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file"
            files = (
                [source]
                if (REPO_ROOT / source).is_file()
                else [str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / source).rglob("*.py")]
            )
            for path in files:
                assert _dockerignore_allows(path), f"{dockerfile.name}: {path} is excluded by .dockerignore"
    assert not _dockerignore_allows(".venv/bin/python") and not _dockerignore_allows("docker/.env")
    assert not _dockerignore_allows("data/local/x.parquet")

    users = [args for kw, args in final if kw == "USER"]
    assert users == ["10001:10001"], users
    assert any(kw == "CMD" for kw, _ in final)
    secret = re.compile(r"(PASSWORD|TOKEN|SECRET|API_KEY)", re.IGNORECASE)
    for keyword, args in steps:
        if keyword in ("ENV", "ARG"):
            assert not secret.search(args), f"{dockerfile.name}: {keyword} {args} looks like a secret"
    for keyword, args in steps:
        if keyword == "ARG" and "IMAGE=" in args:
            image = args.split("=", 1)[1]
            assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
    # What compose runs in these images is there.
    copied = " ".join(args for kw, args in final if kw == "COPY")
    assert "/opt/hnr/docker/mlflow-server.sh" in copied
    assert "docker/dagster.yaml docker/workspace.yaml /opt/dagster/dagster_home/" in copied


def test_cpu_image_pins_follow_the_makefile() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    make_vars = dict(re.findall(r"^([A-Z_]+) \?= (.*)$", makefile, flags=re.MULTILINE))
    args = dict(args.split("=", 1) for kw, args in _instructions(DOCKER / "Dockerfile") if kw == "ARG" and "=" in args)
    assert make_vars["TORCH_SPEC"] == f"torch=={args['TORCH_VERSION']}"
    assert args["MODEL_PKGS"].strip('"') == make_vars["MODEL_PKGS"]
    assert args["PYTHON_IMAGE"].startswith("python:3.11-")


def test_pyproject_deps_script(tmp_path: Path) -> None:
    script = DOCKER / "pyproject_deps.py"
    run = [sys.executable, str(script), "--pyproject", str(REPO_ROOT / "pyproject.toml")]
    everything = subprocess.run(run, capture_output=True, text=True, check=True).stdout.splitlines()
    import tomllib

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert everything == declared
    fewer = subprocess.run([*run, "--exclude", "Torch", "transformers"], capture_output=True, text=True, check=True)
    assert [d for d in declared if not d.startswith(("torch", "transformers"))] == fewer.stdout.splitlines()
    bad = subprocess.run([*run, "--extra", "nope"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "no optional dependency group 'nope'" in bad.stderr


# ------------------------------------------------------------------------------------------ scripts


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [
        DOCKER / "mlflow-server.sh",
        DOCKER / "postgres" / "init-mlflow-db.sh",
        REPO_ROOT / "scripts" / "system-deps.sh",
        REPO_ROOT / "scripts" / "stack.sh",
        DOCKER / "standins" / "postgres-entrypoint.sh",
    ]
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script} is not executable"
    result = subprocess.run(
        [str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mlflow_entry_script_quotes_the_password_and_keeps_it_off_the_command_line(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").symlink_to(sys.executable)
    record = tmp_path / "record.json"
    (fake_bin / "mlflow").write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
    )
    (fake_bin / "mlflow").chmod(0o755)
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "MLFLOW_DB_USER": "hnr",
        "MLFLOW_DB_PASSWORD": "p@ss/w:rd%",
        "MLFLOW_DB": "mlflow",
    }
    subprocess.run([str(DOCKER / "mlflow-server.sh"), "--dev"], env=env, check=True, timeout=60)
    got = json.loads(record.read_text())
    assert got["env"]["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://hnr:p%40ss%2Fw%3Ard%25@postgres:5432/mlflow"
    assert "MLFLOW_DB_PASSWORD" not in got["env"]
    assert got["env"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert not any("p@ss" in arg or "%40" in arg for arg in got["argv"])
    argv = " ".join(got["argv"])
    assert argv.startswith("server --host 0.0.0.0 --port 5000 --workers 1 --serve-artifacts")
    assert got["argv"][-1] == "--dev"

    missing = subprocess.run(
        [str(DOCKER / "mlflow-server.sh")], env={**env, "MLFLOW_DB_PASSWORD": ""}, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "MLFLOW_DB_PASSWORD is not set" in missing.stderr
