"""The compose deployment for real: images built, the stack up, runs through the daemon and the Docker run
launcher, MLflow on Postgres, the UI in a browser, and everything torn down again.

`scripts/stack.sh up` starts a Docker engine when none answers (dockerd, as root, its pidfile and log in
this module's temp folder), builds the base images where no registry can be reached (stand-ins made with
debootstrap), the wheelhouse and the hnr image, and brings docker/compose.yaml up (plus
docker/compose.datasets.yaml: ../shared/datasets as the read-only dataset volume) with a generated
Postgres password and free loopback ports. Then, as a user would, through the published ports:

- the webserver lists the assets of the `local` profile from the code-location container;
- `datasets[scifact]` + `bm25_scores[scifact]` are launched through GraphQL, queued, started by the daemon
  in a container of their own, end SUCCESS, and report SciFact's BM25 nDCG@10 of 0.6789 (Anserini);
- `scores[scifact|bm25-retrieval]` logs to MLflow: a FINISHED run in MLflow's Postgres database, its
  artifacts in the artifact volume;
- headless Chromium shows the run and the asset pages (screenshots in test-artifacts/stack/).

`scripts/stack.sh down` runs at the end whatever happened (failed assertion, Ctrl-C, SIGTERM), and the
teardown checks that no container, engine process, bridge or iptables rule is left. HNR_SKIP_STACK=1
skips the module on a developer machine; CI never sets it. docs/stack.md has the timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from hnr_assets_tests.ops.servers import free_port

SKIP_VAR = "HNR_SKIP_STACK"
pytestmark = [
    pytest.mark.stack,
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get(SKIP_VAR) == "1", reason=f"{SKIP_VAR}=1 (developer opt-out; CI never sets it)"),
    # dagster-docker 0.29.27 under dagster 1.13.28 (docker/requirements-deploy.txt), imported by docker-py users.
    pytest.mark.filterwarnings("ignore:Found version mismatch between `dagster-shared`:UserWarning"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_SH = REPO_ROOT / "scripts" / "stack.sh"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "stack"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IMAGE = "hnr:stack"
DATASET = "scifact"
ANSERINI_SCIFACT_NDCG10 = 0.6789
# Generous: a cold build on 2 shared cores; CI's hard limit is 90 minutes for the whole suite.
UP_TIMEOUT_S = 60 * 60
DOWN_TIMEOUT_S = 10 * 60
READY_S = 300
RUN_S = 20 * 60
CONTAINER_EXIT_S = 180
UI_TIMEOUT_MS = 90_000
# What an engine started by stack.sh leaves running, when it is not stopped.
ENGINE_PROCESSES = re.compile(r"^(dockerd|containerd|containerd-shim\S*|docker-proxy|runc)$")
# ... and in the kernel: mounts under its data and exec roots, its links, its iptables rules (those that
# name it or its bridges, and the hairpin MASQUERADE of a published port, which names neither).
ENGINE_MOUNT_ROOTS = ("/var/lib/docker/", "/run/docker/")
ENGINE_LINKS = re.compile(r"^\d+: (docker0|br-[0-9a-f]{12}|veth\w+)", re.M)
ENGINE_RULES = re.compile(
    r"DOCKER|docker0|br-[0-9a-f]{12}|^-A POSTROUTING -s ([0-9.]+)/32 -d \1/32 -p (tcp|udp) -m (tcp|udp) --dport \d+ -j MASQUERADE$"
)

WORKSPACE_STATUS = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message } } }"""
ASSET_KEYS = "{ assetNodes { assetKey { path } isMaterializable } }"
DAEMON_HEALTH = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy
    lastHeartbeatErrors { message } } } } }"""
LAUNCH_RUN = """
mutation ($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""
RUN_STATUS = """
query ($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status tags { key value } }
    ... on Error { message }
  }
}"""
RUN_EVENTS = """
query ($runId: ID!) {
  logsForRun(runId: $runId, limit: 2000) {
    __typename
    ... on EventConnection { events { __typename ... on MessageEvent { message level } } }
    ... on Error { message }
  }
}"""
LATEST_MATERIALIZATION = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) {
        runId partition metadataEntries { label
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text } } } }
  }
}"""


# ------------------------------------------------------------------------------------------ helpers


class Reporter:
    """Lines for the terminal (shown live in `make test`, whatever pytest captures) and for stack.log."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self._terminal = config.pluginmanager.get_plugin("terminalreporter")
        self._capture = config.pluginmanager.get_plugin("capturemanager")
        self._path = path

    def __call__(self, message: str) -> None:
        line = f"[stack {time.strftime('%H:%M:%S')}] {message}"
        with self._path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if self._terminal is None:
            return
        # Past pytest's output capture, as its live logging does.
        suspended = self._capture.global_and_fixture_disabled() if self._capture else contextlib.nullcontext()
        with suspended:
            self._terminal.write_line(line)


def _datasets_dir() -> Path:
    raw = os.environ.get("HNR_DATASETS_DIR") or str(REPO_ROOT.parent / "shared" / "datasets")
    path = Path(raw).resolve()
    if not (path / DATASET / "corpus.jsonl").is_file():
        pytest.fail(
            f"{path / DATASET} is not a BEIR folder: the stack test reads ../shared/datasets (HNR_DATASETS_DIR)"
        )
    return path


def _run_script(command: str, env: dict[str, str], log_path: Path, timeout: float, say: Reporter) -> list[str]:
    """`scripts/stack.sh COMMAND`, its output in `log_path`, its progress lines reported; returns its lines.

    The script runs in a process group of its own. When the test is interrupted (Ctrl-C, SIGTERM) or the
    script overruns `timeout`, the group gets SIGINT, as a Ctrl-C would give it: debootstrap, pip or
    docker build stop, the script's own cleanup runs, and then the teardown's `down` takes the rest. The
    engine it starts lives in a session of its own and stays up for `down`.
    """
    lines: list[str] = []
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            ["bash", str(STACK_SH), command],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        watchdog = threading.Timer(timeout, _stop_group, [proc])
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                lines.append(line.rstrip("\n"))
                if line.startswith("stack: "):
                    say(line.rstrip("\n")[len("stack: ") :])
            code = proc.wait()
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            watchdog.cancel()
    if code != 0:
        tail = "\n".join(lines[-40:])
        pytest.fail(f"scripts/stack.sh {command} exited {code} (log {log_path}):\n{tail}", pytrace=False)
    return lines


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGINT to the script's process group, SIGTERM after 20 s, SIGKILL after 30 more, until it is gone."""
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.5)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (a CI timeout) as a KeyboardInterrupt: pytest then runs the fixtures' teardown."""
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Stack:
    """The running deployment, as its user sees it."""

    dagster_url: str
    mlflow_url: str
    image: str
    state: Path
    say: Reporter
    docker: object  # docker.DockerClient

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(
            f"{self.dagster_url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            pytest.fail(f"GraphQL errors: {body['errors']}", pytrace=False)
        return body["data"]

    def service(self, name: str):
        """The container of compose service `name` (project `hnr`)."""
        found = self.docker.containers.list(
            filters={"label": ["com.docker.compose.project=hnr", f"com.docker.compose.service={name}"]}
        )
        assert len(found) == 1, f"service {name}: {found}"
        return found[0]

    def exec(self, service: str, argv: list[str]) -> str:
        code, output = self.service(service).exec_run(argv)
        text = output.decode("utf-8", errors="replace")
        assert code == 0, f"{service}: {argv} exited {code}: {text}"
        return text


def _wait(what: str, probe: Callable[[], bool], timeout: float, interval: float = 2.0) -> float:
    started = time.monotonic()
    while True:
        with contextlib.suppress(requests.RequestException, ValueError):
            if probe():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"no {what} after {timeout:.0f} s", pytrace=False)
        time.sleep(interval)


def _leftovers(state: Path, owned_pid: int | None) -> list[str]:
    """What the stack left on this machine: engine processes, containers, mounts, links, iptables rules."""
    problems = [f"temporary root {p} is left" for p in sorted(Path("/var/tmp").glob("hnr-standin.*"))]
    if owned_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(owned_pid, 0)
            problems.append(f"dockerd {owned_pid} still runs")
        ps = subprocess.run(["ps", "-eo", "pid=,comm="], capture_output=True, text=True, check=True).stdout
        for row in ps.splitlines():
            pid, _, comm = row.strip().partition(" ")
            if ENGINE_PROCESSES.match(comm.strip()):
                problems.append(f"process {pid} {comm.strip()} still runs")
        mounts = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
        problems += [
            f"mount {row.split()[4]} is left" for row in mounts if row.split()[4].startswith(ENGINE_MOUNT_ROOTS)
        ]
        problems += [f"network namespace {p} is left" for p in sorted(Path("/run/docker/netns").glob("*"))]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        problems += [f"network link {m} is left" for m in ENGINE_LINKS.findall(links)]
        saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
        problems += [
            f"iptables: {r}" for r in saved.splitlines() if r.startswith(("-A", "-N")) and ENGINE_RULES.search(r)
        ]
        before = (state / "host-before").read_text(encoding="utf-8") if (state / "host-before").exists() else ""
        # `iptables-save | grep -ci docker`, as it was before the engine.
        named = len([line for line in saved.splitlines() if "docker" in line.lower()])
        recorded = re.search(r"^iptables_docker=(\d+)", before, re.M)
        if named != (int(recorded.group(1)) if recorded else 0):
            problems.append(f"iptables-save names Docker {named} times, {recorded.group(1) if recorded else 0} before")
        forward = re.search(r"^ip_forward=(\d)", before, re.M)
        now = Path("/proc/sys/net/ipv4/ip_forward").read_text(encoding="utf-8").strip()
        if forward and now != forward.group(1):
            problems.append(f"net.ipv4.ip_forward is {now}, was {forward.group(1)}")
    else:
        # An engine that was running before the test stays; nothing of the stack may be left on it.
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", "label=com.docker.compose.project=hnr"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        out += subprocess.run(
            ["docker", "ps", "-aq", "--filter", "label=dagster/run_id"], capture_output=True, text=True, check=False
        ).stdout.split()
        problems += [f"container {c} is left" for c in sorted(set(out))]
    return problems


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The deployment up (scripts/stack.sh up), and down again at the end, whatever happened."""
    if shutil.which("bash") is None:
        pytest.fail("bash is missing")
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    say = Reporter(request.config, ARTIFACTS / "stack.log")
    state = tmp_path_factory.mktemp("stack")
    dagster_port, mlflow_port = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "HNR_STACK_DIR": str(state),
        "HNR_IMAGE": IMAGE,
        "HNR_STACK_DAGSTER_PORT": str(dagster_port),
        "HNR_STACK_MLFLOW_PORT": str(mlflow_port),
        "HNR_DATASETS_HOST_DIR": str(_datasets_dir()),
        "PYTHON": sys.executable,
    }
    previous = signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    owned_pid: int | None = None
    engine_dir = state  # where the engine's pidfile and the host's state before it lie
    try:
        say(f"scripts/stack.sh up (state {state})")
        lines = _run_script("up", env, ARTIFACTS / "up.log", UP_TIMEOUT_S, say)
        settings = dict(line.split("=", 1) for line in lines if re.fullmatch(r"[A-Z_]+=.*", line))
        if settings.get("ENGINE_PIDFILE"):
            engine_dir = Path(settings["ENGINE_PIDFILE"]).parent
            owned_pid = int(Path(settings["ENGINE_PIDFILE"]).read_text().strip())
            say(f"Docker engine: dockerd {owned_pid}, started by scripts/stack.sh (stopped at the end)")
        else:
            say("Docker engine: one that was running before (it stays running)")
        say(f"stack up after {time.monotonic() - started:.0f} s")
        import docker

        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto", timeout=120)
        try:
            yield Stack(
                dagster_url=f"http://127.0.0.1:{dagster_port}",
                mlflow_url=f"http://127.0.0.1:{mlflow_port}",
                image=IMAGE,
                state=state,
                say=say,
                docker=client,
            )
        finally:
            client.close()
    finally:
        try:
            if owned_pid is None and (state / "dockerd.pid").exists():  # `up` failed after starting it
                with contextlib.suppress(ValueError):
                    owned_pid = int((state / "dockerd.pid").read_text().strip())
            down_started = time.monotonic()
            _run_script("down", env, ARTIFACTS / "down.log", DOWN_TIMEOUT_S, say)
            for name in ("dockerd.log", "build.log", "compose.log", "compose-up.log"):
                if (state / name).exists():
                    shutil.copy(state / name, ARTIFACTS / name)
            problems = _leftovers(engine_dir, owned_pid)
            say(
                f"down in {time.monotonic() - down_started:.0f} s; whole stack test {time.monotonic() - started:.0f} s; "
                + ("nothing left behind" if not problems else f"LEFT BEHIND: {problems}")
            )
            assert not problems, problems
        finally:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def dagster(stack: Stack) -> Stack:
    """The webserver answers, the code location (gRPC server in `hnr-code`) is loaded, the daemon is healthy."""

    def loaded() -> bool:
        workspace = stack.graphql(WORKSPACE_STATUS)["workspaceOrError"]
        assert workspace["__typename"] == "Workspace", workspace
        for entry in workspace["locationEntries"]:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                pytest.fail(f"code location {entry['name']} failed to load:\n{error['message']}", pytrace=False)
        return [e["name"] for e in workspace["locationEntries"]] == ["hnr"] and all(
            e["loadStatus"] == "LOADED" for e in workspace["locationEntries"]
        )

    waited = _wait("loaded code location `hnr`", loaded, READY_S)

    def daemons_healthy() -> bool:
        statuses = stack.graphql(DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
        return all(s["healthy"] for s in statuses if s["required"])

    waited += _wait("healthy dagster-daemon", daemons_healthy, READY_S)
    stack.say(f"webserver up, code location `hnr` loaded, daemon healthy ({waited:.0f} s)")
    # The one-time "Join the Dagster community" dialog would cover the pages of the browser test.
    stack.graphql("mutation { setNuxSeen }")
    return stack


@dataclass
class FinishedRun:
    run_id: str
    container_id: str
    status: str
    tags: dict[str, str]
    events: list[dict]


def _launch(stack: Stack, assets: list[str], partition: str, extra_tags: dict[str, str] | None = None) -> FinishedRun:
    """Launch the assets' partition through GraphQL (as the UI's Materialize does) and wait for its end."""
    tags = {"dagster/partition": partition, **(extra_tags or {})}
    params = {
        "selector": {
            "repositoryLocationName": "hnr",
            "repositoryName": "__repository__",
            "jobName": "__ASSET_JOB",
            "assetSelection": [{"path": [a]} for a in assets],
        },
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        "runConfigData": {},
    }
    launched = stack.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    # The queued run coordinator: the webserver only enqueues, the daemon dequeues and launches.
    assert launched["run"]["status"] == "QUEUED", launched
    stack.say(f"run {run_id} of {'+'.join(assets)}[{partition}] launched through GraphQL: QUEUED")
    run: dict = {}

    def ended() -> bool:
        nonlocal run
        run = stack.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        return run.get("status") in ("SUCCESS", "FAILURE", "CANCELED")

    waited = _wait(f"end of run {run_id}", ended, RUN_S, interval=3.0)
    events = stack.graphql(RUN_EVENTS, {"runId": run_id})["logsForRun"]["events"]
    run_tags = {t["key"]: t["value"] for t in run["tags"]}
    container_id = run_tags.get("docker/container_id", "")
    stack.say(f"run {run_id}: {run['status']} after {waited:.0f} s, in container {container_id or '(none)'}")
    if run["status"] != "SUCCESS":
        failures = [
            e.get("message") for e in events if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
        ]
        logs = ""
        if container_id:
            with contextlib.suppress(Exception):
                logs = stack.docker.containers.get(container_id).logs(tail=80).decode("utf-8", errors="replace")
        pytest.fail(f"run {run_id} ended {run['status']}: {failures}\n--- container log ---\n{logs}", pytrace=False)
    return FinishedRun(run_id, container_id, run["status"], run_tags, events)


def _materialization(stack: Stack, asset: str, partition: str) -> tuple[str, dict]:
    data = stack.graphql(LATEST_MATERIALIZATION, {"key": {"path": [asset]}, "partitions": [partition]})
    (materialization,) = data["assetOrError"]["assetMaterializations"]
    values = {}
    for entry in materialization["metadataEntries"]:
        for key in ("floatValue", "intValue", "text"):
            if key in entry:
                values[entry["label"]] = entry[key]
    return materialization["runId"], values


@pytest.fixture(scope="module")
def bm25_run(dagster: Stack) -> FinishedRun:
    """`datasets[scifact]` + `bm25_scores[scifact]` in one run, in its own container."""
    return _launch(dagster, ["datasets", "bm25_scores"], DATASET)


@pytest.fixture(scope="module")
def score_run(dagster: Stack, bm25_run: FinishedRun) -> FinishedRun:
    """`scores[scifact|bm25-retrieval]`: re-scores the BM25 run and logs it to MLflow with its artifacts."""
    import dagster as dg

    key = dg.MultiPartitionKey({"system": "bm25-retrieval", "dataset": DATASET})
    tags = {f"dagster/partition/{dim}": value for dim, value in key.keys_by_dimension.items()}
    return _launch(dagster, ["scores"], str(key), tags)


# ------------------------------------------------------------------------------------------ tests


def test_code_location_lists_the_assets_of_the_local_profile(dagster: Stack, tmp_path: Path) -> None:
    from hnr_assets.definitions import build_defs
    from hnr_assets.settings import Settings

    settings = Settings.from_env(
        {"HNR_PROFILE": "local", "HNR_DATA_DIR": str(tmp_path), "HNR_DATASETS_DIR": str(_datasets_dir())}
    )
    expected = {"/".join(k.path) for k in build_defs(settings).resolve_asset_graph().materializable_asset_keys}
    nodes = dagster.graphql(ASSET_KEYS)["assetNodes"]
    listed = {"/".join(n["assetKey"]["path"]) for n in nodes if n["isMaterializable"]}
    assert expected, "the local profile defines no assets"
    assert listed == expected
    dagster.say(f"the webserver lists the {len(listed)} assets of the local profile")


def test_bm25_run_is_launched_by_the_daemon_in_its_own_container(dagster: Stack, bm25_run: FinishedRun) -> None:
    assert bm25_run.container_id, f"no docker/container_id tag: {bm25_run.tags}"
    container = dagster.docker.containers.get(bm25_run.container_id)
    # The run reports SUCCESS just before its process exits.
    exit_code = container.wait(timeout=CONTAINER_EXIT_S)["StatusCode"]
    container.reload()
    attrs = container.attrs
    assert exit_code == 0, container.logs(tail=40)
    assert attrs["Config"]["Image"] == dagster.image
    assert attrs["Config"]["Labels"]["dagster/run_id"] == bm25_run.run_id
    assert attrs["State"]["Status"] == "exited" and attrs["State"]["ExitCode"] == 0, attrs["State"]
    assert "hnr_network" in attrs["NetworkSettings"]["Networks"]
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert mounts["/datasets"]["Name"] == "hnr_datasets" and mounts["/datasets"]["RW"] is False
    assert mounts["/data"]["Name"] == "hnr_data"
    # Not in the daemon's or the code server's container: the run container is none of the services.
    services = {c.id for c in dagster.docker.containers.list(filters={"label": "com.docker.compose.project=hnr"})}
    assert container.id not in services
    # Enqueued by the webserver, then started by the daemon's run queue through the Docker run launcher.
    kinds = [e["__typename"] for e in bm25_run.events]
    assert kinds.index("RunEnqueuedEvent") < kinds.index("RunStartingEvent") < kinds.index("RunStartEvent"), kinds
    assert "RunSuccessEvent" in kinds, kinds
    launched = (
        f"[DockerRunLauncher] Launching run in a new container {bm25_run.container_id} with image {dagster.image}"
    )
    assert launched in [e.get("message") for e in bm25_run.events], "no launcher event names the container"

    run_id, metadata = _materialization(dagster, "bm25_scores", DATASET)
    assert run_id == bm25_run.run_id
    ndcg = metadata["ndcg@10"]
    assert metadata["backend"] == "pyserini" and metadata["queries"] == 300
    dagster.say(
        f"run {bm25_run.run_id}: container {bm25_run.container_id[:12]} (image {attrs['Config']['Image']}, "
        f"exit {attrs['State']['ExitCode']}), status {bm25_run.status}; "
        f"bm25_scores[{DATASET}] nDCG@10 {ndcg:.4f} (Anserini {ANSERINI_SCIFACT_NDCG10})"
    )
    assert round(ndcg, 4) == ANSERINI_SCIFACT_NDCG10
    _, datasets_meta = _materialization(dagster, "datasets", DATASET)
    assert datasets_meta["documents"] == 5183, datasets_meta


def _postgres_run(stack: Stack, run_id: str) -> tuple[str, str]:
    """(status, artifact_uri) of an MLflow run, read in MLflow's Postgres database itself."""
    assert re.fullmatch(r"[0-9a-f]{32}", run_id), run_id
    out = stack.exec(
        "postgres",
        [
            "psql",
            "-U",
            "hnr",
            "-d",
            "mlflow",
            "-tA",
            "-c",
            f"SELECT status, artifact_uri FROM runs WHERE run_uuid = '{run_id}'",
        ],
    ).strip()
    status, _, uri = out.partition("|")
    return status, uri


def test_a_run_that_logs_to_mlflow_leaves_a_finished_run_in_postgres_and_its_artifacts_in_the_volume(
    dagster: Stack, bm25_run: FinishedRun, score_run: FinishedRun
) -> None:
    assert score_run.container_id and score_run.container_id != bm25_run.container_id
    _, metadata = _materialization(dagster, "scores", score_run.tags["dagster/partition"])
    mlflow_run_id = metadata["mlflow_run_id"]
    got = requests.get(f"{dagster.mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": mlflow_run_id}, timeout=30)
    got.raise_for_status()
    info = got.json()["run"]["info"]
    assert info["status"] == "FINISHED", info
    assert info["artifact_uri"].startswith("mlflow-artifacts:/"), info

    status, uri = _postgres_run(dagster, mlflow_run_id)
    assert (status, uri) == ("FINISHED", info["artifact_uri"])
    # The BM25 run logged its own MLflow run too (params and metrics, no artifact).
    _, bm25_meta = _materialization(dagster, "bm25_scores", DATASET)
    assert _postgres_run(dagster, bm25_meta["mlflow_run_id"])[0] == "FINISHED"

    # The artifacts, uploaded through the server (--serve-artifacts), lie in the artifact volume.
    relative = uri.removeprefix("mlflow-artifacts:/").strip("/")
    folder = f"/mlflow/artifacts/{relative}/eval/{DATASET}"
    listing = dagster.exec("mlflow", ["ls", "-l", folder])
    assert "metrics.json" in listing and "per_query.parquet" in listing, listing
    stored = json.loads(dagster.exec("mlflow", ["cat", f"{folder}/metrics.json"]))
    assert round(stored["ndcg@10"], 4) == ANSERINI_SCIFACT_NDCG10
    mount = {m["Destination"]: m["Name"] for m in dagster.service("mlflow").attrs["Mounts"]}
    assert mount["/mlflow/artifacts"] == "hnr_mlflow_artifacts"
    dagster.say(
        f"run {score_run.run_id} (container {score_run.container_id[:12]}): MLflow run {mlflow_run_id} "
        f"{status} in Postgres, artifacts {folder} in volume hnr_mlflow_artifacts "
        f"(metrics.json nDCG@10 {stored['ndcg@10']:.4f})"
    )


def test_webserver_pages_in_headless_chromium(dagster: Stack, bm25_run: FinishedRun, score_run: FinishedRun) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (or `make test`), which installs chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda button: button.click())
            shot = "01-run.png"
            try:
                page.goto(f"{dagster.dagster_url}/runs/{bm25_run.run_id}")
                page.locator("text=Success >> visible=true").first.wait_for()
                # The run's event log, filtered to the launcher's event that names the container.
                page.get_by_placeholder(re.compile(r"^Filter")).first.fill("DockerRunLauncher")
                page.locator(f"text={bm25_run.container_id[:12]} >> visible=true").first.wait_for()
                page.screenshot(path=str(ARTIFACTS / shot))
                shot = "02-bm25-scores-asset.png"
                page.goto(f"{dagster.dagster_url}/assets/bm25_scores?view=events&partition={DATASET}")
                page.locator("text=ndcg@10 >> visible=true").first.wait_for()
                page.locator(f"text={ANSERINI_SCIFACT_NDCG10} >> visible=true").first.wait_for()
                page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
            except Exception:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(ARTIFACTS / f"FAILED-{shot}"), full_page=True)
                raise
        finally:
            browser.close()
    dagster.say(f"headless Chromium: run and asset pages shown (screenshots in {ARTIFACTS})")
