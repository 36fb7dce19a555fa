"""MLflow tracking: one parent run per pipeline (or sweep), one child run per stage.

The tracking URI comes from the config, else `MLFLOW_TRACKING_URI`, else a sqlite file in the run
directory (a real database, no server; a run directory on s3:// or gs:// needs one of the first
two). Nothing happens at import; every function takes the URI explicitly so Ray workers on other
nodes can log to the same place. Artifacts may be local files or URIs (downloaded to log them).

Secrets: the URI given here is the one used to connect (credentials in it included), but what is
stored (params, tags, run names) goes through sskd_ray.redaction first, and MLflow's own "View run
at <url>" line is switched off for a URI that carries credentials.

A tracking server that does not answer never fails a stage: calls are kept in the run directory and
sent when it answers again (sskd_ray.tracking_journal).
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from sskd_ray import storage
from sskd_ray import tracking_journal as tj
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
    from mlflow.tracking import MlflowClient

    _quiet_if_secret(uri)
    return MlflowClient(uri)


def _artifact_location(uri: str, run_dir: str | Path | None) -> str | None:
    """Artifacts next to the run (not in the process's cwd): in a local run directory, else beside a
    local sqlite store; with a tracking server and a run in object storage, the server decides."""
    if run_dir is not None and not storage.is_uri(run_dir):
        return Path(run_dir).resolve().joinpath("mlartifacts").as_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent.joinpath("mlartifacts").as_uri()
    return None


def _experiment_id(client: Any, name: str, location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def _search(client: Any, experiment: str, tags: dict[str, str]) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _apply(uri: str, entry: dict) -> Any:
    """Carry out one tracking call (tracking_journal's entry); -> the run id for a create."""
    from mlflow.entities import Metric, Param

    client, op, run = _client(uri), entry["op"], entry.get("run")
    if op == "create":
        exp_id = _experiment_id(client, entry["experiment"], entry["location"])
        tags = dict(entry["tags"])
        if entry.get("replay"):  # once only, even if a replay is cut short and repeated
            tags[LOCAL_RUN_TAG] = entry["local"]
            if found := _search(client, entry["experiment"], {LOCAL_RUN_TAG: entry["local"]}):
                return found
        return client.create_run(exp_id, tags=tags, run_name=entry["name"]).info.run_id
    if op == "status":
        if entry["status"] == "RUNNING":
            client.update_run(run, status="RUNNING")
        else:
            client.set_terminated(run, entry["status"])
    elif op == "params":
        existing = client.get_run(run).data.params
        batch = [Param(k, v) for k, v in entry["params"].items() if k not in existing]
        for i in range(0, len(batch), 100):
            client.log_batch(run, params=batch[i:i + 100])
    elif op == "metrics":
        client.log_batch(run, metrics=[Metric(k, v, ts, step) for k, v, ts, step in entry["metrics"]])
    elif op == "artifacts":
        for location in entry["paths"]:
            if not storage.exists(location):
                continue
            with storage.local_copy(location) as path:
                if path.is_dir():
                    client.log_artifacts(run, str(path), entry["artifact_path"])
                else:
                    client.log_artifact(run, str(path), entry["artifact_path"])
    return None


RETRY_ENV, HTTP_BOUNDS = tj.RETRY_ENV, tj.HTTP_BOUNDS


def _send(uri: str, entry: dict, journal: tj.Journal | None = None) -> Any:
    return tj.send(journal or tj.active(), uri, entry, _apply)


LOCAL_RUN_TAG = "sskd.local_run"  # a run created from a kept call: the local id it had meanwhile


def find_run(uri: str, experiment: str, tags: dict[str, str], run_dir: str | Path | None = None) -> str | None:
    """The newest run of `experiment` whose tags equal `tags` (for resuming a pipeline). With a server
    that does not answer: a run whose creation is kept in the journal (of `run_dir`, or the active
    one) with these tags, else None (a new run is then created)."""
    journal = tj.active() or (tj.journal_at(str(run_dir), uri) if run_dir is not None and tj.is_remote(uri) else None)
    tags = redact(dict(tags))
    if journal is None or not journal.kept:
        try:
            return _search(_client(uri), experiment, tags)
        except Exception as err:  # noqa: BLE001 - only a server that does not answer is passed over
            if journal is None or not tj.transient(err):
                raise
            journal.down(err)
    for path in reversed(journal.entries()):
        entry = storage.read_json(path)
        if entry["op"] == "create" and entry["experiment"] == experiment and tags.items() <= entry["tags"].items():
            return entry["local"]
    return None


@contextlib.contextmanager
def start_run(uri: str, experiment: str, name: str, *, parent_id: str | None = None,
              run_id: str | None = None, tags: dict[str, str] | None = None,
              run_dir: str | Path | None = None) -> Iterator[str]:
    """Start (or reopen, given `run_id`) a run; yields its id (a local id while the server does not
    answer). Nested under `parent_id` when given. The outermost run of a process with a tracking server
    keeps calls the server does not take in `<run_dir>/mlflow-pending/` and sends them (tracking_journal)."""
    with _journal(uri, run_dir):
        from mlflow.tracking.context.registry import resolve_tags

        if run_id:
            _send(uri, {"op": "status", "run": run_id, "status": "RUNNING"})
        else:
            all_tags = redact(resolve_tags(dict(tags or {})))  # what mlflow.start_run adds: user, source, git
            if parent_id:
                all_tags["mlflow.parentRunId"] = parent_id
            run_id = _send(uri, {"op": "create", "local": tj.new_local_id(), "experiment": experiment,
                                 "location": _artifact_location(uri, run_dir), "name": redact(name), "tags": all_tags})
        status = "FAILED"
        try:
            yield run_id
            status = "FINISHED"
        finally:
            _send(uri, {"op": "status", "run": run_id, "status": status})


@contextlib.contextmanager
def _journal(uri: str, run_dir: str | Path | None) -> Iterator[None]:
    """The outermost run of a process opens the journal, flushes it meanwhile, and drains it at the end."""
    if tj.active() is not None or run_dir is None or not tj.is_remote(uri):
        yield
        return
    journal = tj.journal_at(str(run_dir), uri)
    tj.enter(journal)
    stop, flusher = tj.flush_in_background(journal, _apply)  # also sends what an earlier run kept
    try:
        yield
    finally:
        stop.set()
        flusher.join()
        try:
            tj.drain(journal, _apply, float(os.environ.get(tj.DRAIN_ENV, 120)))
        finally:
            tj.leave(journal)


def pending_folder() -> str:
    """The active journal's folder ("" with none): where a stage's workers keep what they cannot send."""
    journal = tj.active()
    return journal.folder if journal else ""


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Flat params (`a.b` keys); values are redacted, stringified and cut to MLflow's limit."""
    _send(uri, {"op": "params", "run": run_id,
                "params": {k: str(v)[:MAX_PARAM_LENGTH] for k, v in redact(dict(params)).items()}})


def metrics_entry(run_id: str, metrics: dict[str, float], step: int | None = None) -> dict | None:
    """A metrics call (numbers only, stamped now), or None when there is nothing to log."""
    now = int(time.time() * 1000)
    batch = [[k, float(v), now, step or 0] for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {"op": "metrics", "run": run_id, "metrics": batch} if batch else None


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    if entry := metrics_entry(run_id, metrics, step):
        _send(uri, entry)


def metric_sender(config: dict) -> tj.MetricSender:
    """For rank 0 of a stage (config: {"uri", "run_id", "journal", "retry_s"}): rows off the step."""
    return tj.MetricSender(config["uri"], config["run_id"], config.get("journal", ""),
                           float(config.get("retry_s", 30)), _apply)


def log_artifacts(uri: str, run_id: str, paths: list[str | Path], artifact_path: str | None = None) -> None:
    """Log files or folders (local or URIs); ones that are not there are passed over."""
    _send(uri, {"op": "artifacts", "run": run_id, "paths": [str(p) for p in paths], "artifact_path": artifact_path})


def set_terminated(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _send(uri, {"op": "status", "run": run_id, "status": status})
