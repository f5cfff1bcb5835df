"""The UIs in a real browser: `dagster dev` over the `test` profile, and the MLflow UI.

Debian's chromium (scripts/system-deps.sh installs it) is driven by Playwright; no browser is downloaded.
Both servers start on free loopback ports at the beginning of the module, each in its own process group
that is stopped as a whole at the end. The backfill is launched as soon as Dagster is up, so that its
run proceeds while the asset graph and the MLflow UI are checked. Screenshots go to
`test-artifacts/browser/` (git-ignored), also on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import requests

from hnr_assets.cli import init_dagster_home
from hnr_assets.definitions import build_defs
from hnr_assets.resources.mlflow import MlflowResource
from hnr_assets.settings import Settings
from hnr_assets_tests.fixtures import make_tiny_dataset
from hnr_assets_tests.ops.servers import ServerProcess, free_port

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
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
PARTITION = "tiny-a"
# Generous: the CI machine has 2 cores that other work shares.
DAGSTER_READY_S = 240
MLFLOW_READY_S = 180
BACKFILL_S = 300
UI_TIMEOUT_MS = 60_000

LAUNCH_BACKFILL = """
mutation ($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}"""
BACKFILL_STATUS = """
query ($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status error { message } runs(limit: 10) { runId status } }
    ... on Error { message }
  }
}"""
WORKSPACE_STATUS = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message } } }"""
DAEMON_HEALTH = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy
    lastHeartbeatErrors { message } } } } }"""
LATEST_MATERIALIZATION = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) {
        runId partition metadataEntries { label } } }
  }
}"""
# Names shown on asset nodes of the lineage graph (group boxes carry a tooltip too; they are not assets).
# Full nodes carry the name in a tooltip; when the graph is zoomed out (several groups), nodes are drawn
# minimal, with the name as text, long ones shortened in the middle ("llm_neg…_ce_scores").
GRAPH_ASSET_NAMES = """() => Array.from(document.querySelectorAll('svg foreignObject [data-tooltip]'))
  .filter(e => e.closest('[class*="AssetNode"]'))
  .map(e => e.getAttribute('data-tooltip'))
  .concat(Array.from(document.querySelectorAll('svg foreignObject [class*="AssetNode_minimalName"]'))
  .map(e => e.textContent))"""


def _resolve_shown(names: list[str], expected: set[str]) -> set[str]:
    """Names read from the graph, a middle-shortened one mapped to the expected name it abbreviates."""
    found = set()
    for name in names:
        if "…" not in name:
            found.add(name)
            continue
        head, _, tail = name.partition("…")
        matches = [e for e in expected if e.startswith(head) and e.endswith(tail) and len(e) >= len(head + tail)]
        found.update(matches if len(matches) == 1 else [name])
    return found


@dataclass
class Stack:
    """The two servers and the settings they run with."""

    dagster: ServerProcess
    mlflow: ServerProcess
    settings: Settings


def _graphql(server: ServerProcess, query: str, variables: dict | None = None) -> dict:
    response = requests.post(f"{server.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        server.fail(f"GraphQL errors: {body['errors']}")
    return body["data"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`dagster dev` (test profile over a tiny mirror) and `mlflow server`, started side by side."""
    root = tmp_path_factory.mktemp("ui")
    mirror = root / "mirror"
    make_tiny_dataset(mirror / "tiny-a", seed=1)
    make_tiny_dataset(mirror / "tiny-b", seed=2, prefix="b")
    dagster_home = init_dagster_home(root / "dagster_home")
    mlflow_port, dagster_port = free_port(), free_port()
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    env = {
        **os.environ,
        "HNR_PROFILE": "test",
        "HNR_DATA_DIR": str(root / "data"),
        "HNR_DATASETS_DIR": str(mirror),
        "DAGSTER_HOME": str(dagster_home),
        "MLFLOW_TRACKING_URI": mlflow_url,
        "HNR_MLFLOW_UI_URL": mlflow_url,
        # The servers load this checkout's hnr_assets, whatever the environment has installed.
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    settings = Settings.from_env(env)
    mlflow = ServerProcess(
        "mlflow server",
        [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow_port)),
            *("--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
            *("--default-artifact-root", str(root / "mlflow-artifacts")),
        ],
        {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        root,
        root / "mlflow.log",
        mlflow_url,
    )
    try:
        dagster = ServerProcess(
            "dagster dev",
            [
                *(sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml")),
                *("-h", "127.0.0.1", "-p", str(dagster_port)),
            ],
            env,
            REPO_ROOT,
            root / "dagster.log",
            f"http://127.0.0.1:{dagster_port}",
        )
        try:
            yield Stack(dagster=dagster, mlflow=mlflow, settings=settings)
        finally:
            dagster.stop()
    finally:
        mlflow.stop()


@pytest.fixture(scope="module")
def dagster_ui(stack: Stack) -> ServerProcess:
    """The Dagster webserver, once it answers and the `hnr` code location has loaded."""
    server = stack.dagster

    def loaded() -> bool:
        requests.get(f"{server.url}/server_info", timeout=10).raise_for_status()
        workspace = _graphql(server, WORKSPACE_STATUS)["workspaceOrError"]
        if workspace["__typename"] != "Workspace":
            server.fail(f"the workspace failed to load: {workspace}")
        entries = workspace["locationEntries"]
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                server.fail(f"code location {entry['name']} failed to load:\n{error['message']}")
        return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

    server.wait_until("loaded code location", loaded, DAGSTER_READY_S)
    # The one-time "Join the Dagster community" dialog (shown on loopback origins) would cover the pages.
    _graphql(server, "mutation { setNuxSeen }")
    return server


@pytest.fixture(scope="module")
def backfill_id(dagster_ui: ServerProcess) -> str:
    """An asset backfill of one `datasets` partition, launched through GraphQL as the UI does."""
    params = {"assetSelection": [{"path": ["datasets"]}], "partitionNames": [PARTITION], "title": "browser test"}
    result = _graphql(dagster_ui, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        dagster_ui.fail(f"launching the backfill failed: {result}")
    return result["backfillId"]


@pytest.fixture(scope="module")
def mlflow_ui(stack: Stack) -> ServerProcess:
    server = stack.mlflow
    server.wait_until("MLflow health", lambda: requests.get(f"{server.url}/health", timeout=10).ok, MLFLOW_READY_S)
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (or `make test`), which installs chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser page; a screenshot of it is saved when the test fails."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    # Backstop for the community dialog, in case marking it seen (dagster_ui) stops sufficing.
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda button: button.click())
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(_artifact(f"FAILED-{request.node.name}.png")), full_page=True)
    context.close()


def _artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def test_asset_graph_shows_every_asset_of_the_definitions(stack: Stack, dagster_ui, backfill_id, page) -> None:
    # Materializable assets only: a dependency on a key no stage defines yet (e.g. `scores` on `encoders`
    # before the training stage lands) is a stub in the graph, which the UI does not draw as a node.
    graph = build_defs(stack.settings).resolve_asset_graph()
    expected = {key.path[-1] for key in graph.materializable_asset_keys}
    assert expected, "the definitions have no assets"
    page.goto(f"{dagster_ui.url}/asset-groups")
    page.locator("svg foreignObject").first.wait_for()

    def shown() -> set[str]:
        return _resolve_shown(page.evaluate(GRAPH_ASSET_NAMES), expected)

    deadline = time.monotonic() + 30
    expanded = False
    seen: set[str] = set()
    while not expected <= (seen := seen | shown()) and time.monotonic() < deadline:
        if not expanded and page.locator("svg foreignObject").count() > 0:
            # With several asset groups the global graph starts collapsed; Alt+E expands every group.
            page.keyboard.press("Alt+KeyE")
            expanded = True
        elif expanded:
            # The graph renders only the nodes inside the viewport: zoom out over it to bring the rest in.
            zoom_out = page.locator('[aria-label="zoom_out"]')
            if zoom_out.count():
                zoom_out.first.click()
        time.sleep(1)
    page.screenshot(path=str(_artifact("01-asset-graph.png")))
    missing = sorted(expected - seen)
    if missing:
        dagster_ui.fail(f"asset graph lacks {missing}; nodes shown: {sorted(seen)}")


def test_mlflow_ui_shows_a_run_logged_through_the_resource(stack: Stack, mlflow_ui, page) -> None:
    tracking = MlflowResource(
        tracking_uri=mlflow_ui.url, experiment="hnr-test", ui_url=mlflow_ui.url, retries=3, backoff_seconds=1.0
    )
    run_name = f"browser-test:{os.getpid()}"
    with tracking.run(run_name, tags={"hnr/test": "browser"}) as run:
        run.log_params({"recipe": "bm25", "batch_size": 16})
        run.log_metrics({"ndcg_at_10": 0.4321})

    page.goto(f"{mlflow_ui.url}/#/experiments/{run.experiment_id}/runs")
    link = page.get_by_role("link", name=run_name)
    link.wait_for()
    page.screenshot(path=str(_artifact("04-mlflow-experiment.png")))

    page.goto(run.url)
    for text in (run_name, "ndcg_at_10", "0.4321", "batch_size", "Finished"):
        page.locator(f"text={text} >> visible=true").first.wait_for()
    page.screenshot(path=str(_artifact("05-mlflow-run.png")), full_page=True)


def test_backfill_of_one_dataset_partition_succeeds_and_its_metadata_is_shown(
    stack: Stack, dagster_ui, backfill_id, page
) -> None:
    status: dict = {}

    def finished() -> bool:
        nonlocal status
        status = _graphql(dagster_ui, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return status.get("status") not in (None, "REQUESTED", "CANCELING", "FAILING")

    try:
        dagster_ui.wait_until(f"end of backfill {backfill_id}", finished, BACKFILL_S, interval=2.0)
    except pytest.fail.Exception:
        daemons = _graphql(dagster_ui, DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
        dagster_ui.fail(f"backfill {backfill_id} did not finish: {status}\ndaemons: {daemons}")
    if status["status"] != "COMPLETED_SUCCESS":
        dagster_ui.fail(f"backfill {backfill_id} ended {status['status']}: {status}")

    page.goto(f"{dagster_ui.url}/runs/b/{backfill_id}")
    page.locator("text=Succeeded >> visible=true").first.wait_for()
    page.screenshot(path=str(_artifact("02-backfill.png")))

    # What the UI must show, from GraphQL (every metadata label) and from the stored files (values).
    asset = _graphql(dagster_ui, LATEST_MATERIALIZATION, {"key": {"path": ["datasets"]}, "partitions": [PARTITION]})
    (materialization,) = asset["assetOrError"]["assetMaterializations"]
    labels = [entry["label"] for entry in materialization["metadataEntries"]]
    assert {"documents", "sample_documents"} <= set(labels), labels
    stored = stack.settings.data_dir / "test" / "datasets" / PARTITION
    corpus = pl.read_parquet(stored / "corpus.parquet")

    page.goto(f"{dagster_ui.url}/assets/datasets?view=events&partition={PARTITION}")
    page.locator(f"text=materialized in run {materialization['runId'][:8]} >> visible=true").first.wait_for()
    rows = page.locator("tr")
    for label in labels:
        rows.filter(has=page.locator("td", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))).first.wait_for()
    documents_row = rows.filter(has=page.locator("td", has_text=re.compile(r"^\s*documents\s*$"))).first
    assert documents_row.locator("td").nth(1).inner_text().strip() == str(corpus.height)
    sample_row = rows.filter(has=page.locator("td", has_text=re.compile(r"^\s*sample_documents\s*$"))).first
    sample_text = sample_row.inner_text()
    for doc_id in corpus["doc_id"].head(3):
        assert doc_id in sample_text, f"sample document {doc_id} not shown: {sample_text!r}"
    page.screenshot(path=str(_artifact("03-materialization-metadata.png")), full_page=True)
