"""MLflow calls that outlive a tracking-server outage (issue 29).

A tracking server is a service that restarts. With a remote tracking URI (http://, https://), every
call of sskd_ray.tracking goes through `send`: tried at once, MLflow's own HTTP retries bounded
(`bound_http`), and when the server does not answer, kept as one small json file in
`<run dir>/mlflow-pending/` instead of failing the stage. The job's driver runs a flusher thread
that sends the kept calls, oldest first, as soon as the server answers again; it prints one line when
an outage starts and one when everything kept was sent. While calls are kept, new ones queue behind
them, so nothing waits on a server known to be down. A run created during an outage gets a local id
(`local-...`) that later calls use; the flusher creates the run (once: it is tagged with the local id)
and records the real id in `runs/<local id>.json`. When the job ends it waits up to
SSKD_TRACKING_DRAIN_SECONDS for the server, then says what is still kept and how to send it: the next
run in the same run directory does, or `python jobs/sync_tracking.py <run dir>`.

Rank 0 of a training stage never calls MLflow on the step's path: `MetricSender` puts each row in a
queue that a thread sends, or keeps in the same folder for the driver to send.

Only a server that does not answer counts (refused or reset connections, timeouts, 429/502/503/504
after MLflow's retries): a refused credential or a rejected value fails at once, as before. A local
sqlite store has no outage and gets no journal. What is kept is what would have been sent: params and
tags already redacted (sskd_ray.redaction), file locations of artifacts (the files stay in the run
directory), metrics with the time they were logged at.
"""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sskd_ray import storage
from sskd_ray.redaction import redact

PENDING_DIR = "mlflow-pending"
LOCAL_PREFIX = "local-"
RETRY_ENV, DRAIN_ENV = "SSKD_TRACKING_RETRY_SECONDS", "SSKD_TRACKING_DRAIN_SECONDS"
# MLflow retries a dead server for ~4 minutes by default (7 retries, backoff 2, 120 s timeout): a few
# seconds here, since a call that fails is kept, not lost. A value the user set is left alone.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_RESOLVED: dict[str, str] = {}  # local run id -> MLflow run id, in this process


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def bound_http() -> None:
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)


def transient(err: BaseException) -> bool:
    """A server that does not answer (worth keeping the call), as opposed to one that says no."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                        TimeoutError)):
        return True
    text = str(err)
    return isinstance(err, MlflowException) and "API request to" in text and (
        "failed with exception" in text or "failed with timeout exception" in text
        or any(f"failed with error code {code}" in text for code in (429, 502, 503, 504)))


class Unresolved(LookupError):
    """A kept call names a run whose creation is still kept."""


class Refused(LookupError):
    """A kept call names a run whose creation the server refused: it cannot be sent either."""


@dataclass
class Journal:
    folder: str  # <run dir>/mlflow-pending
    uri: str
    retry_s: float = 30.0
    quiet: bool = False  # a worker's: the driver's flusher speaks for the job
    kept: bool = False  # this process knows of kept calls: new ones go behind them
    down_at: float = 0.0  # monotonic time of the last failure
    warned: bool = False
    sent: int = 0  # kept calls sent since the outage began
    lock: threading.RLock = field(default_factory=threading.RLock)

    def entries(self) -> list[str]:
        return [p for p in storage.list_files(self.folder, "*.json") if storage.name(p)[0].isdigit()]

    def down(self, err: BaseException) -> None:
        with self.lock:
            self.down_at = time.monotonic()
            if not self.warned and not self.quiet:
                print(redact(f"WARNING tracking: the MLflow server at {self.uri} does not answer ({_short(err)}): "
                             f"tracking calls are kept in {self.folder} and sent when it answers again (tried "
                             f"every {self.retry_s:g} s); the stages go on"), flush=True)
                self.warned = True

    def keep(self, entry: dict) -> str | None:
        """Write `entry` as a new file; -> the run id the caller goes on with (a create's local id)."""
        with self.lock:
            self.kept = True
            name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
            storage.write_json(storage.join(self.folder, name), {**entry, "uri": redact(self.uri)}, indent=None)
        return entry.get("local") or entry.get("run")


_JOURNALS: dict[str, Journal] = {}
_ACTIVE: list[Journal] = []


def journal_at(root: str, uri: str, quiet: bool = False) -> Journal:
    """The journal of run directory `root` (one object per folder in a process)."""
    folder = storage.join(root, PENDING_DIR) if storage.name(root) != PENDING_DIR else storage.normalize(root)
    if folder not in _JOURNALS:
        bound_http()
        _JOURNALS[folder] = Journal(folder, uri, float(os.environ.get(RETRY_ENV, 30)), quiet)
    return _JOURNALS[folder]


def active() -> Journal | None:
    return _ACTIVE[-1] if _ACTIVE else None


def new_local_id() -> str:
    return f"{LOCAL_PREFIX}{uuid.uuid4().hex[:16]}"


def resolve_id(journal: Journal | None, run_id: str | None) -> str | None:
    """An MLflow run id for `run_id` (itself unless local), or None while its creation is kept."""
    if not run_id or not run_id.startswith(LOCAL_PREFIX):
        return run_id
    if run_id not in _RESOLVED and journal is not None:
        path = storage.join(journal.folder, "runs", f"{run_id}.json")
        if storage.is_file(path):
            _RESOLVED[run_id] = storage.read_json(path)["run_id"]
    if _RESOLVED.get(run_id) == "":
        raise Refused(run_id)
    return _RESOLVED.get(run_id)


def resolve_entry(journal: Journal | None, entry: dict) -> dict:
    """`entry` with local run ids (its run, tag values) replaced; Unresolved if one is still kept."""
    def real(run_id: str) -> str:
        resolved = resolve_id(journal, run_id)
        if resolved is None:
            raise Unresolved(run_id)
        return resolved

    out = dict(entry)
    if out.get("run"):
        out["run"] = real(out["run"])
    if out.get("tags"):
        out["tags"] = {k: real(v) if isinstance(v, str) and v.startswith(LOCAL_PREFIX) else v
                       for k, v in out["tags"].items()}
    return out


def send(journal: Journal | None, uri: str, entry: dict, apply) -> Any:
    """Do `entry` now through `apply(uri, entry)`, or keep it (see the module doc); -> apply's result,
    or what `keep` returns."""
    if journal is None:
        return apply(uri, entry)
    with journal.lock:  # a worker's rows need no order: they go direct again once retry_s has passed
        behind = (journal.kept and not journal.quiet) or (
            journal.down_at and time.monotonic() - journal.down_at < journal.retry_s)
    if not behind:
        try:
            return apply(uri, resolve_entry(journal, entry))
        except Unresolved:
            pass
        except Exception as err:  # noqa: BLE001 - kept only when the server did not answer
            if not transient(err):
                raise
            journal.down(err)
    return journal.keep(entry)


def replay(journal: Journal, apply) -> int:
    """Send what is kept, oldest first, until the server stops answering; -> how many are left."""
    paths, sent, left = journal.entries(), 0, 0
    for i, path in enumerate(paths):
        entry = storage.read_json(path)
        try:
            result = apply(journal.uri, {**resolve_entry(journal, entry), "replay": True})
        except Unresolved:
            left += 1  # its run is created by a call still kept (another folder's, or a later pass)
            continue
        except Exception as err:  # noqa: BLE001 - Refused included: its run was refused
            if transient(err):
                journal.down(err)
                journal.sent += sent
                return left + len(paths) - i
            target = storage.join(journal.folder, "failed", storage.name(path))
            storage.write_json(target, {**entry, "error": redact(str(err))[:2000]})
            print(redact(f"WARNING tracking: the MLflow server refused a kept call ({_short(err)}): moved to {target}"),
                  flush=True)
            if entry["op"] == "create":  # the calls of that run cannot be sent either: "" marks it refused
                _RESOLVED[entry["local"]] = ""
                storage.write_json(storage.join(journal.folder, "runs", f"{entry['local']}.json"), {"run_id": ""})
        else:
            if entry["op"] == "create":
                _RESOLVED[entry["local"]] = result
                storage.write_json(storage.join(journal.folder, "runs", f"{entry['local']}.json"), {"run_id": result})
            sent += 1
        storage.remove(path)
    with journal.lock:
        journal.sent += sent
        if left == 0:  # the outage is over for this journal: one line for all it kept
            if journal.sent and not journal.quiet:
                print(redact(f"tracking: the MLflow server at {journal.uri} answers: sent the {journal.sent} "
                             f"call(s) kept meanwhile"), flush=True)
            journal.kept, journal.down_at, journal.warned, journal.sent = False, 0.0, False, 0
    return left


def drain(journal: Journal, apply, wait_s: float) -> int:
    """Replay until nothing is kept or `wait_s` passed; say what is left and how to send it."""
    deadline = time.monotonic() + wait_s
    while (left := replay(journal, apply)) and time.monotonic() < deadline:
        time.sleep(min(journal.retry_s, max(0.0, deadline - time.monotonic())))
    if left:
        print(redact(f"WARNING tracking: {left} call(s) still wait for the MLflow server at {journal.uri} after "
                     f"{wait_s:g} s; they are kept in {journal.folder}: the next run in this run directory sends "
                     f"them, or now: python jobs/sync_tracking.py {storage.parent(journal.folder)}"), flush=True)
    return left


def flush_in_background(journal: Journal, apply) -> tuple[threading.Event, threading.Thread]:
    """The driver's flusher: every retry_s, send what is kept (also what a worker kept)."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                if journal.entries():
                    replay(journal, apply)
            except Exception as err:  # noqa: BLE001 - the flusher never takes the job down
                print(redact(f"WARNING tracking: flushing {journal.folder} failed: {_short(err)}"), flush=True)
            if stop.wait(journal.retry_s):
                return

    thread = threading.Thread(target=loop, name="mlflow-flusher", daemon=True)
    thread.start()
    return stop, thread


def enter(journal: Journal) -> None:
    _ACTIVE.append(journal)


def leave(journal: Journal) -> None:
    _ACTIVE.remove(journal)


class MetricSender:
    """Rank 0's metrics off the training step: `log` queues a row, a thread sends it (or keeps it in
    the run's journal when the server does not answer). Without a journal (a local sqlite store) rows
    are logged at once, as before."""

    def __init__(self, uri: str, run_id: str, folder: str, retry_s: float, apply):
        self.uri, self.run_id, self.apply = uri, run_id, apply
        self.journal = journal_at(folder, uri, quiet=True) if folder and is_remote(uri) else None
        if self.journal:
            self.journal.retry_s = retry_s
        self.queue: queue.Queue = queue.Queue()
        self.current: dict | None = None
        self.thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True) if self.journal else None
        if self.thread:
            self.thread.start()

    def log(self, entry: dict | None) -> None:
        if entry is None:
            return
        if self.thread is None:
            send(None, self.uri, entry, self.apply)
        else:
            self.queue.put(entry)

    def _run(self) -> None:
        while (entry := self.queue.get()) is not None:
            self.current = entry
            try:
                send(self.journal, self.uri, entry, self.apply)
            except Exception as err:  # noqa: BLE001 - a refused row is said, never fatal to the stage
                print(redact(f"WARNING tracking: a metrics row was not logged: {_short(err)}"), flush=True)
            self.current = None

    def close(self, wait_s: float = 10.0) -> None:
        """Wait up to `wait_s` for the queue; what a server that does not answer still holds is kept."""
        if self.thread is None:
            return
        self.queue.put(None)
        self.thread.join(wait_s)
        if self.thread.is_alive():
            left = [self.current] if self.current else []
            while not self.queue.empty():
                left.append(self.queue.get_nowait())
            for entry in (e for e in left if e is not None):
                self.journal.keep(entry)  # a row also sent meanwhile is stored once (MLflow drops duplicates)


def _short(err: BaseException) -> str:
    """The reason in one short phrase (MLflow's message quotes the whole urllib3 chain)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "[Errno" in text:
        return text[text.index("[Errno"):].split("'")[0].split('"')[0].rstrip(")")
    if "timed out" in text or "timeout" in text:
        return "timed out"
    return text[:200]
