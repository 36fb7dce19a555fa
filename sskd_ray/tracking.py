"""MLflow tracking: one parent run per pipeline (or sweep), one child run per stage.

The tracking URI comes from the config, else `MLFLOW_TRACKING_URI`, else a sqlite file in the run
directory (a real database, no server; a run directory on s3:// or gs:// needs one of the first
two). Nothing happens at import; every function takes the URI explicitly so Ray workers on other
nodes can log to the same place. Artifacts may be local files or URIs (downloaded to log them).

Secrets: the URI given here is the one used to connect (credentials in it included), but what is
stored (params, tags, run names) goes through sskd_ray.redaction first, and MLflow's own "View run
at <url>" line is switched off for a URI that carries credentials.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from sskd_ray import storage
from sskd_ray.config import ConfigError
from sskd_ray.redaction import redact

MAX_PARAM_LENGTH = 6000


def resolve_tracking_uri(configured: str, run_dir: str | Path) -> str:
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_uri(run_dir):
        raise ConfigError(f"the run directory {run_dir} is in object storage, where MLflow's default sqlite file "
                          f"cannot live: set tracking.uri (or MLFLOW_TRACKING_URI) to an MLflow server "
                          f"(http://host:5000) or a local sqlite:////abs/path/mlflow.db")
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def _quiet_if_secret(uri: str) -> None:
    """MLflow prints the tracking URL, userinfo and all, when a run ends: not for a URI with secrets."""
    if redact(uri) != uri:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _client(uri: str):
    import mlflow

    _quiet_if_secret(uri)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow 3 also exports the URI to the environment: every later run of this process (and every
    # child process, e.g. a sweep started by a test) would then log there instead of its own run dir
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return mlflow


def _artifact_location(uri: str, run_dir: str | Path | None) -> str | None:
    """Artifacts next to the run (not in the process's cwd): in a local run directory, else beside a
    local sqlite store; with a tracking server and a run in object storage, the server decides."""
    if run_dir is not None and not storage.is_uri(run_dir):
        return Path(run_dir).resolve().joinpath("mlartifacts").as_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()
    return None


def _experiment_id(mlflow: Any, name: str, location: str | None) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def find_run(uri: str, experiment: str, tags: dict[str, str]) -> str | None:
    """The newest run of `experiment` whose tags equal `tags` (for resuming a pipeline)."""
    mlflow = _client(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in redact(tags).items())
    runs = mlflow.search_runs([exp.experiment_id], filter_string=query, order_by=["start_time DESC"],
                              max_results=1, output_format="list")
    return runs[0].info.run_id if runs else None


@contextlib.contextmanager
def start_run(uri: str, experiment: str, name: str, *, parent_id: str | None = None,
              run_id: str | None = None, tags: dict[str, str] | None = None,
              run_dir: str | Path | None = None) -> Iterator[str]:
    """Start (or reopen, given `run_id`) a run; yields its id. Nested under `parent_id` when given."""
    mlflow = _client(uri)
    exp_id = _experiment_id(mlflow, experiment, _artifact_location(uri, run_dir))
    all_tags = redact(dict(tags or {}))
    if parent_id:
        all_tags["mlflow.parentRunId"] = parent_id
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id,
                          run_name=None if run_id else redact(name), tags=all_tags or None, nested=True) as run:
        yield run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Flat params (`a.b` keys); values are redacted, stringified and cut to MLflow's limit."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    _quiet_if_secret(uri)
    client = MlflowClient(uri)
    existing = client.get_run(run_id).data.params
    batch = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in redact(dict(params)).items() if k not in existing]
    for i in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[i:i + 100])


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    import time

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if batch:
        _quiet_if_secret(uri)
        MlflowClient(uri).log_batch(run_id, metrics=batch)


def log_artifacts(uri: str, run_id: str, paths: list[str | Path], artifact_path: str | None = None) -> None:
    """Log files or folders (local or URIs); ones that are not there are passed over."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for location in paths:
        if not storage.exists(location):
            continue
        with storage.local_copy(location) as path:
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path)
            else:
                client.log_artifact(run_id, str(path), artifact_path)


def set_terminated(uri: str, run_id: str, status: str = "FINISHED") -> None:
    from mlflow.tracking import MlflowClient

    _quiet_if_secret(uri)
    MlflowClient(uri).set_terminated(run_id, status)
