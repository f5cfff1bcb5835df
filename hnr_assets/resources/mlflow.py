"""MLflow tracking as a resource: one experiment per profile, runs that never stay RUNNING.

The embedded default is a SQLite store with artifacts under the data root; `MLFLOW_TRACKING_URI`
points it at a server instead. Calls to the tracking store are retried with bounded backoff, and a
store that stays unreachable is an `HnrError` naming the URI.

Every run is tagged with the host and process that opened it (`hnr/host`, `hnr/pid`,
`hnr/pid_start`). A run can stay RUNNING only when its process could not close it: the process was
killed, or the tracking server was down when the run failed. Before opening a run, the resource
closes (marks FAILED, with a reason) every RUNNING run of the experiment whose process on this host
is gone, or that this process opened and no longer holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field

from hnr_assets.lib.runtime.errors import HnrError
from hnr_assets.lib.runtime.owner import HOST, TAG_HOST, Owner

log = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow's HTTP limits, read from the environment by its client. The ones the user set win; the others
# come from the resource's config (a later resource with other limits replaces an earlier one's).
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "http_retries", "MLFLOW_HTTP_REQUEST_TIMEOUT": "http_timeout_seconds"}
_USER_HTTP_ENV = frozenset(name for name in _HTTP_ENV if name in os.environ)
# Runs this process has open; a RUNNING run tagged with this process and not in here was left behind.
_OPEN_RUNS: set[str] = set()
_RUNS_LOCK = threading.Lock()


def owner_tags() -> dict[str, str]:
    """Tags naming the process that opens a run (`hnr/host`, `hnr/pid`, `hnr/pid_start`)."""
    return Owner.current().tags()


def process_gone(run: Any) -> bool:
    """Whether the process that opened `run` (by its owner tags) has ended or no longer holds the run.

    Only runs of this host are judged; a run of another host (or without owner tags) is never stale here.
    """
    owner = Owner.from_tags(run.data.tags)
    if owner is None or not owner.local:
        return False
    if owner.is_current:
        return run.info.run_id not in _OPEN_RUNS
    return not owner.alive()  # gone, or the pid now belongs to another process


# Tag names the assets put on their runs, one declaration each (runs are found again by them). The owner
# tags (`hnr/host`, `hnr/pid`, `hnr/pid_start`) are `lib.runtime.owner`'s.
TAG_ASSET = "hnr/asset"
TAG_PARTITION = "hnr/partition"
TAG_PROFILE = "hnr/profile"
TAG_DAGSTER_RUN = "hnr/dagster_run_id"
TAG_ROLE = "hnr/role"
TAG_SYSTEM = "hnr/system"
TAG_PRECISION = "hnr/precision"
TAG_DEVICE = "hnr/device"
TAG_CLOSED_REASON = "hnr/closed_reason"
# Older names some stages' runs carry (the mining stage's negative sets and BM25 scores, generation's
# Dagster run id); kept as they are, since stores written so far are searched by them.
TAG_MINING_ASSET = "asset"
TAG_MINING_DATASET = "dataset"
TAG_MINING_DAGSTER_RUN = "dagster_run_id"
TAG_GENERATION_DAGSTER_RUN = "dagster/run_id"


_KEY_REFUSED = re.compile(r"[^\w./\- :]")


def mlflow_key(name: object) -> str:
    """A param, metric or tag name MLflow accepts: characters outside `\\w . / - : space` become `_`.

    Valid generator keys may hold `+` and `=` (`llm-g+x`), which MLflow refuses in names.
    """
    return _KEY_REFUSED.sub("_", str(name))


def _quote(value: str) -> str:
    """A value inside a single-quoted MLflow search string."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


class TrackingError(HnrError):
    """The MLflow tracking store failed or is unreachable."""


class MlflowResource(dg.ConfigurableResource):
    """MLflow client for the active profile.

    Attributes:
        tracking_uri: `sqlite:///...` (embedded) or `http(s)://...` (server).
        experiment: Experiment name (one per profile).
        artifact_location: Artifact root for a new experiment (a folder under the data root for the
            embedded store; empty to let a server choose).
        ui_url: Base URL of the MLflow UI, for links in Dagster metadata.
        retries: Attempts per tracking call.
        backoff_seconds: Base of the exponential wait between attempts.
    """

    tracking_uri: str = Field(description="MLflow tracking URI.")
    experiment: str = Field(description="Experiment name: hnr-<profile>.")
    artifact_location: str = Field(default="", description="Artifact root of a newly created experiment.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="MLflow UI base URL for links.")
    retries: int = Field(default=4, ge=1, description="Attempts per tracking call.")
    backoff_seconds: float = Field(default=1.0, ge=0.0, description="Base of the exponential backoff.")
    http_timeout_seconds: int = Field(default=30, gt=0, description="MLflow's own HTTP timeout per request.")
    http_retries: int = Field(default=1, ge=0, description="MLflow's own HTTP retries per request (ours wrap them).")
    lock_dir: str = Field(
        default="",
        description="Folder of the lock files that serialise find-or-create of shared runs (default: the temp folder).",
    )

    # ------------------------------------------------------------------------------------ plumbing

    def client(self):
        # MLflow reads its HTTP limits from the environment; its defaults (7 retries, 120 s) would
        # hide an unreachable server for many minutes. A value the user set wins.
        for name, attr in _HTTP_ENV.items():
            if name not in _USER_HTTP_ENV:
                os.environ[name] = str(getattr(self, attr))
        # MLflow 3 sends usage telemetry from the client (and keeps an id in ~/.config/mlflow) unless
        # told not to; hnr turns it off as it does Dagster's (a user who wants it sets the variable).
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        if not self.tracking_uri.startswith("sqlite:///"):
            return MlflowClient(tracking_uri=self.tracking_uri)
        # The client creates and migrates a new SQLite store on first use; two processes doing so at
        # once break the migration ("duplicate column name", "expected to match one row"), so the
        # store is opened under a lock file beside it.
        db = Path(self.tracking_uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with db.with_name(db.name + ".lock").open("a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                return MlflowClient(tracking_uri=self.tracking_uri)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one tracking call with bounded retries; raise `TrackingError` when it keeps failing."""
        last: Exception | None = None
        for attempt in range(1, self.retries + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - the MLflow client raises many types; re-raised below
                last = exc
                log.warning("MLflow %s failed (attempt %d/%d): %s", what, attempt, self.retries, exc)
                if attempt < self.retries:
                    time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
        raise TrackingError(
            f"MLflow at {self.tracking_uri} failed to {what} after {self.retries} attempts: {last}"
        ) from last

    def experiment_id(self) -> str:
        """Id of the profile's experiment, created on first use."""
        client = self.client()

        def get_or_create() -> str:
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            if self.artifact_location:
                Path(self.artifact_location).mkdir(parents=True, exist_ok=True)
            return client.create_experiment(self.experiment, artifact_location=self.artifact_location or None)

        return self.call("get or create the experiment", get_or_create)

    def run_url(self, run_id: str, experiment_id: str | None = None) -> str:
        experiment_id = experiment_id or self.experiment_id()
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    # ------------------------------------------------------------------------------------ runs

    @contextlib.contextmanager
    def run(self, run_name: str, tags: dict[str, str] | None = None) -> Iterator[TrackedRun]:
        """Start a run; it ends FINISHED on success and FAILED on any error (never left RUNNING).

        Args:
            run_name: Human-readable name, e.g. `encoder:bm25`.
            tags: Extra tags (the Dagster run id, partition, ...).

        Yields:
            A `TrackedRun` for logging params, metrics and artifacts.
        """
        client = self.client()
        experiment_id = self.experiment_id()
        run_tags = {mlflow_key(k): str(v) for k, v in {**owner_tags(), **(tags or {})}.items()}
        with _RUNS_LOCK:  # a sweep never sees a run of this process between its creation and registration
            self.close_orphaned_runs()
            created = self.call(
                "create a run", lambda: client.create_run(experiment_id, tags=run_tags, run_name=run_name)
            )
            _OPEN_RUNS.add(created.info.run_id)
        tracked = TrackedRun(self, client, created.info.run_id, experiment_id)
        try:
            yield tracked
        except BaseException:
            # A failed run registers nothing: versions it created are removed before it is closed. When
            # the store is unreachable now, the run stays RUNNING until the next run's sweep closes it.
            with contextlib.suppress(TrackingError):
                self.delete_model_versions(tracked.run_id)
            with contextlib.suppress(TrackingError):
                self.call("mark the run FAILED", lambda: client.set_terminated(tracked.run_id, "FAILED"))
            raise
        finally:
            _OPEN_RUNS.discard(tracked.run_id)
        self.call("mark the run FINISHED", lambda: client.set_terminated(tracked.run_id, "FINISHED"))

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a lock shared by every process of this host (and of hosts sharing `lock_dir`) for `name`.

        For find-or-create of a run that several partitions log to (e.g. a baseline's evaluation run):
        without it, two partitions started together both find nothing and both create the run.
        """
        import tempfile

        folder = Path(self.lock_dir) if self.lock_dir else Path(tempfile.gettempdir()) / "hnr-mlflow-locks"
        folder.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(f"{self.tracking_uri}\0{self.experiment}\0{name}".encode()).hexdigest()[:24]
        with (folder / f"{key}.lock").open("a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def close_orphaned_runs(self) -> list[str]:
        """Mark FAILED the RUNNING runs of the experiment whose process on this host is gone (`process_gone`).

        Returns:
            Ids of the runs closed.
        """
        return self.close_stale_runs(
            {TAG_HOST: HOST},
            process_gone,
            reason="its process ended (or lost the tracking server) without closing it; closed by the next run",
        )

    # ------------------------------------------------------------------------------------ stale runs

    def find_runs(self, tags: dict[str, str], status: str | None = "RUNNING") -> list[Any]:
        """Runs of the experiment carrying all `tags` (and in `status`, unless None), newest first."""
        client = self.client()
        experiment_id = self.experiment_id()
        clauses = [f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items()]
        if status is not None:
            clauses.append(f"attributes.status = '{status}'")
        query = " and ".join(clauses)
        runs: list[Any] = []
        token = None
        while True:
            page = self.call(
                "search runs",
                lambda t=token: client.search_runs(
                    [experiment_id], filter_string=query, max_results=500, order_by=["start_time DESC"], page_token=t
                ),
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def close_stale_runs(self, tags: dict[str, str], is_stale: Callable[[Any], bool], reason: str) -> list[str]:
        """Mark FAILED the RUNNING runs with `tags` whose owner is gone (a process killed mid-run).

        A killed process cannot close its own run; the next attempt at the same work calls this first,
        so that no run stays RUNNING. Model versions registered by a closed run are deleted: they
        belong to no successful materialization.

        Args:
            tags: Tags that identify the work (asset and partition, say).
            is_stale: Decides, per run, whether its owner is gone (a live concurrent run must be kept).
            reason: Stored in the tag `hnr/closed_reason` (`TAG_CLOSED_REASON`).

        Returns:
            Ids of the runs closed.
        """
        from mlflow.entities import RunTag

        client = self.client()
        closed = []
        for run in self.find_runs(tags, status="RUNNING"):
            if not is_stale(run):
                continue
            run_id = run.info.run_id
            self.delete_model_versions(run_id)
            self.call(
                "tag a stale run",
                lambda r=run_id: client.log_batch(r, tags=[RunTag(TAG_CLOSED_REASON, reason[:5000])]),
            )
            self.call("mark a stale run FAILED", lambda r=run_id: client.set_terminated(r, "FAILED"))
            log.warning("MLflow run %s was left RUNNING (%s); marked FAILED", run_id, reason)
            closed.append(run_id)
        return closed

    # ------------------------------------------------------------------------------------ registry

    def delete_model_versions(self, run_id: str) -> list[tuple[str, str]]:
        """Delete every registered model version created from `run_id`; return (name, version) pairs."""
        client = self.client()
        versions = self.call(
            "search model versions", lambda: client.search_model_versions(f"run_id = '{_quote(run_id)}'")
        )
        deleted = []
        for version in versions:
            self.call(
                "delete a model version",
                lambda v=version: client.delete_model_version(v.name, v.version),
            )
            deleted.append((version.name, str(version.version)))
        return deleted

    def model_url(self, name: str, version: str | None = None) -> str:
        """Link to a registered model (or one version of it) in the MLflow UI."""
        base = f"{self.ui_url.rstrip('/')}/#/models/{name}"
        return f"{base}/versions/{version}" if version else base

    # ------------------------------------------------------------------------------------ existing runs

    def open_run(self, run_id: str) -> TrackedRun:
        """An existing run (e.g. an encoder's training run), to log more to it; its status is unchanged.

        Raises:
            TrackingError: The run does not exist in this tracking store (or the store is unreachable).
        """
        client = self.client()
        found = self.call(f"find run {run_id}", lambda: client.get_run(run_id))
        return TrackedRun(self, client, found.info.run_id, found.info.experiment_id)

    def find_run(self, tags: dict[str, str]) -> str | None:
        """Id of the oldest run of the profile's experiment that carries all `tags` (any status), or None."""
        runs = self.find_runs(tags, status=None)
        return runs[-1].info.run_id if runs else None


class TrackedRun:
    """An open MLflow run, logged through the resource's retrying client."""

    def __init__(self, resource: MlflowResource, client: Any, run_id: str, experiment_id: str) -> None:
        self.resource, self.client, self.run_id, self.experiment_id = resource, client, run_id, experiment_id

    @property
    def url(self) -> str:
        return self.resource.run_url(self.run_id, self.experiment_id)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            self.resource.call("log params", lambda c=chunk: self.client.log_batch(self.run_id, params=c))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(mlflow_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            self.resource.call("log metrics", lambda c=chunk: self.client.log_batch(self.run_id, metrics=c))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(mlflow_key(k), str(v)) for k, v in tags.items()]
        self.resource.call("set tags", lambda: self.client.log_batch(self.run_id, tags=items))

    @property
    def artifact_uri(self) -> str:
        run = self.resource.call("get the run", lambda: self.client.get_run(self.run_id))
        return run.info.artifact_uri

    def log_sentence_transformer(
        self, model_dir: Path, artifact_path: str = "model", trust_remote_code: bool = False
    ) -> str:
        """Log a sentence-transformers folder as an MLflow model (flavor `sentence_transformers`).

        Args:
            model_dir: A folder `SentenceTransformer(model_dir)` loads.
            artifact_path: Where in the run's artifacts.
            trust_remote_code: Run Python code the model ships (the profile allowed it for the base encoder).

        Returns:
            The artifact URI of the logged model (the source of a registered version).
        """
        import importlib.metadata
        import tempfile

        import mlflow.sentence_transformers
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(
            str(model_dir), device="cpu", local_files_only=True, trust_remote_code=trust_remote_code
        )
        # Explicit requirements: MLflow's inference would re-import the model in a subprocess.
        requirements = [
            f"{pkg}=={importlib.metadata.version(pkg)}" for pkg in ("sentence-transformers", "transformers", "torch")
        ]
        with tempfile.TemporaryDirectory(prefix="hnr-mlflow-model-") as tmp:
            local = Path(tmp) / artifact_path
            mlflow.sentence_transformers.save_model(model, str(local), pip_requirements=requirements)
            self.log_artifact(local, artifact_path)
        return f"{self.artifact_uri.rstrip('/')}/{artifact_path}"

    def register_model(self, name: str, source: str, description: str = "", tags: dict[str, str] | None = None) -> str:
        """Register `source` (a logged model's artifact URI) as a new version of the registered model `name`.

        Returns:
            The new version number, as a string.
        """
        from mlflow.exceptions import MlflowException

        def ensure_registered_model() -> None:
            try:
                self.client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self.client.create_registered_model(name, description=description or None)

        self.resource.call("create the registered model", ensure_registered_model)
        version = self.resource.call(
            "create a model version",
            lambda: self.client.create_model_version(
                name, source, run_id=self.run_id, tags=dict(tags or {}), description=description or None
            ),
        )
        return str(version.version)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.resource.call(
                "log artifacts", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path)
            )
        else:
            self.resource.call("log artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))
