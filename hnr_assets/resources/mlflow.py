"""MLflow tracking as a resource: one experiment per profile, runs that never stay RUNNING.

The embedded default is a SQLite store with artifacts under the data root; `MLFLOW_TRACKING_URI`
points it at a server instead. Calls to the tracking store are retried with bounded backoff, and a
store that stays unreachable is an `HnrError` naming the URI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field

from hnr_assets.lib.errors import HnrError

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    # ------------------------------------------------------------------------------------ plumbing

    def client(self):
        # MLflow reads its HTTP limits from the environment; its defaults (7 retries, 120 s) would
        # hide an unreachable server for many minutes. A value the user set wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.http_retries))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.http_timeout_seconds))
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.tracking_uri)

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
        created = self.call(
            "create a run",
            lambda: client.create_run(experiment_id, tags=dict(tags or {}), run_name=run_name),
        )
        tracked = TrackedRun(self, client, created.info.run_id, experiment_id)
        try:
            yield tracked
        except BaseException:
            with contextlib.suppress(TrackingError):
                self.call("mark the run FAILED", lambda: client.set_terminated(tracked.run_id, "FAILED"))
            raise
        self.call("mark the run FINISHED", lambda: client.set_terminated(tracked.run_id, "FINISHED"))

    def open_run(self, run_id: str) -> TrackedRun:
        """An existing run (e.g. an encoder's training run), to log more to it; its status is unchanged.

        Raises:
            TrackingError: The run does not exist in this tracking store (or the store is unreachable).
        """
        client = self.client()
        found = self.call(f"find run {run_id}", lambda: client.get_run(run_id))
        return TrackedRun(self, client, found.info.run_id, found.info.experiment_id)

    def find_run(self, tags: dict[str, str]) -> str | None:
        """Id of the oldest run of the profile's experiment that carries all `tags`, or None."""
        client = self.client()
        experiment_id = self.experiment_id()
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self.call(
            "search runs",
            lambda: client.search_runs([experiment_id], filter_string=query, order_by=["attributes.start_time ASC"]),
        )
        return found[0].info.run_id if found else None


class TrackedRun:
    """An open MLflow run, logged through the resource's retrying client."""

    def __init__(self, resource: MlflowResource, client: Any, run_id: str, experiment_id: str) -> None:
        self.resource, self.client, self.run_id, self.experiment_id = resource, client, run_id, experiment_id

    @property
    def url(self) -> str:
        return self.resource.run_url(self.run_id, self.experiment_id)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            self.resource.call("log params", lambda c=chunk: self.client.log_batch(self.run_id, params=c))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            self.resource.call("log metrics", lambda c=chunk: self.client.log_batch(self.run_id, metrics=c))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        self.resource.call("set tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.resource.call(
                "log artifacts", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_path)
            )
        else:
            self.resource.call("log artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))
