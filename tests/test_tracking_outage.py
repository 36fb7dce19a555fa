"""Issue 29 (2): a tracking outage never fails a stage and loses nothing.

Real `mlflow server` processes (conftest.MlflowServer), stopped and started again on the same port and
stores. MLflow's HTTP retries and the journal's retry period are set small here (env), so that outages
of 30-60 s are long against every bound: the bounds are what make a 5-minute outage equivalent.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import MlflowServer
from sskd_ray import tracking
from sskd_ray import tracking_journal as tj

ROOT = Path(__file__).resolve().parents[1]
# generous timeouts: on a loaded 2-core machine one basic-auth password check took several seconds
BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
          tj.RETRY_ENV: "1", tj.DRAIN_ENV: "600"}


@pytest.fixture
def bounded(monkeypatch):
    for key, value in BOUNDS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tj._JOURNALS.clear()


def _runs(uri: str, experiment: str = "exp") -> dict:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


@pytest.mark.slow
def test_runs_and_calls_made_while_the_server_is_down_arrive_when_it_answers(tmp_path, bounded, capsys, monkeypatch):
    """The server is down for the whole job: the runs get local ids, every call is kept in the run
    directory (none waits on the dead server), a resumed lookup finds the kept run, and the job ends
    saying what is kept and how to send it. Once the server is up, `jobs/sync_tracking.py` (another
    process) creates the runs under their parent and sends everything, once."""
    monkeypatch.setenv(tj.DRAIN_ENV, "2")
    server = MlflowServer(tmp_path / "server")  # not started: nothing listens on its port yet
    run_dir = tmp_path / "run"
    (run_dir / "report.md").parent.mkdir(parents=True)
    (run_dir / "report.md").write_text("# report\n")
    began = time.monotonic()
    with tracking.start_run(server.uri, "exp", "pipeline", tags={"sskd.pipeline": "p1"}, run_dir=run_dir) as parent:
        assert parent.startswith(tj.LOCAL_PREFIX)
        tracking.log_params(server.uri, parent, {"loss.temperature": 0.1})
        assert tracking.find_run(server.uri, "exp", {"sskd.pipeline": "p1"}) == parent  # a resume finds it
        with tracking.start_run(server.uri, "exp", "distill", parent_id=parent, run_dir=run_dir / "distill",
                                tags={"sskd.stage": "distill", "sskd.parent": parent}) as child:
            for step in range(1, 31):
                tracking.log_metrics(server.uri, child, {"loss": 1.0 / step}, step=step)
            tracking.log_artifacts(server.uri, child, [run_dir / "report.md"])
        kept_for = time.monotonic() - began
    assert kept_for < 10, f"calls waited on a dead server for {kept_for:.1f} s"
    kept = list((run_dir / tj.PENDING_DIR).glob("*.json"))
    assert len(kept) == 36  # 2 runs, params, 30 rows, a file, 2 ends
    out = capsys.readouterr().out
    assert out.count("does not answer") == 1, out
    assert f"36 call(s) still wait" in out and f"python jobs/sync_tracking.py {run_dir}" in out, out
    server.start()
    try:
        sync = subprocess.run([sys.executable, str(ROOT / "jobs" / "sync_tracking.py"), str(run_dir)],
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
        assert sync.returncode == 0, sync.stdout[-3000:] + sync.stderr[-3000:]
        assert "sent the 36 call(s) kept meanwhile" in sync.stdout
        runs = _runs(server.uri)
        assert set(runs) == {"pipeline", "distill"}
        p, c = runs["pipeline"], runs["distill"]
        assert p.data.params == {"loss.temperature": "0.1"} and p.info.status == "FINISHED"
        assert c.data.tags["mlflow.parentRunId"] == p.info.run_id == c.data.tags["sskd.parent"]
        assert c.data.tags[tracking.LOCAL_RUN_TAG] == child and c.info.status == "FINISHED"
        history = MlflowClient(server.uri).get_metric_history(c.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, 1.0 / s) for s in range(1, 31)]
        assert [a.path for a in MlflowClient(server.uri).list_artifacts(c.info.run_id)] == ["report.md"]
        assert tracking.find_run(server.uri, "exp", {"sskd.pipeline": "p1"}) == p.info.run_id
    finally:
        server.stop()
    assert list((run_dir / tj.PENDING_DIR).glob("*.json")) == []


def test_the_training_step_never_waits_on_a_silent_server(tmp_path, bounded):
    """Rank 0's sender against a server that accepts connections and never answers (the worst kind):
    logging a row returns at once, closing is bounded, and every row is kept for the driver."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel accepts; nobody reads or answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        sender = tj.MetricSender(uri, "run-1", str(tmp_path), retry_s=30, apply=tracking._apply)
        began = time.monotonic()
        for step in range(1, 21):
            sender.log(tracking.metrics_entry("run-1", {"loss": float(step)}, step))
        logged = time.monotonic() - began
        sender.close(wait_s=1.0)
        closed = time.monotonic() - began
    assert logged < 0.5, logged
    assert closed < 3.0, closed
    kept = [json.loads(p.read_text()) for p in (tmp_path / tj.PENDING_DIR).glob("*.json")]
    assert {e["metrics"][0][3] for e in kept} == set(range(1, 21))
    assert all(e["run"] == "run-1" and e["op"] == "metrics" for e in kept)


PASSWORD = "outage-Passw0rd-7"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """One MLflow server with the basic-auth app (admin / PASSWORD) for this module's tests."""
    server = MlflowServer(tmp_path_factory.mktemp("auth-server"), password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_a_refused_credential_is_an_error_not_an_outage(tmp_path, bounded, monkeypatch, auth_server):
    """Only a server that does not answer is waited for: a wrong password fails at once (MLflow's
    basic-auth app), nothing is kept, and the password is in no file of the run directory."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-Passw0rd-2")
    with pytest.raises(Exception, match="401"):
        with tracking.start_run(auth_server.uri, "exp", "pipeline", run_dir=tmp_path / "run"):
            pass
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with tracking.start_run(auth_server.uri, "exp", "pipeline", run_dir=tmp_path / "run") as run_id:
        tracking.log_params(auth_server.uri, run_id, {"a": 1})
    assert not list((tmp_path / "run").rglob("*.json"))


def _follow(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _wait_for(lines: list[str], text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-4000:]
        time.sleep(0.1)


@pytest.mark.slow
def test_a_stage_outlives_a_tracking_outage(tmp_path, auth_server):
    """The issue's trial, shortened: the smoke pipeline's teacher stage against a real MLflow server with
    basic auth; the server is stopped when the stage prints its first progress line and started again
    (same port, same stores) 40 s later, after the stage has finished. The job exits 0, prints one
    warning, and in the end the server holds every row of the stage's history, its AP, params and
    artifacts; the password is in no output and no file."""
    server = auth_server
    run_dir = tmp_path / "run"
    env = {**os.environ, **BOUNDS, tj.RETRY_ENV: "2", "PYTHONPATH": str(ROOT), "SSKD_RAY_LOCAL": "1",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "MLFLOW_TRACKING_USERNAME": "admin",
           "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, str(ROOT / "jobs" / "full_pipeline.py"), "--smoke", "--stage", "teacher_finetune",
           "--run-dir", str(run_dir), f"tracking.uri={server.uri}", "stages.teacher_finetune.iterations=40",
           "stages.teacher_finetune.checkpoint_every=20"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = _follow(proc, lines)
    try:
        _wait_for(lines, "[teacher_finetune] 2/40", proc, timeout=600)
        server.stop()
        stopped = time.monotonic()
        _wait_for(lines, "[teacher_finetune] done in", proc, timeout=600)  # the stage ends during the outage
        time.sleep(max(0.0, 40 - (time.monotonic() - stopped)))
        server.start()
        outage = time.monotonic() - stopped
        proc.wait(timeout=600)
        reader.join(timeout=30)
        output = "".join(lines)
        print(f"outage {outage:.0f} s (server down {outage:.0f} s including its restart)")
        assert proc.returncode == 0, output[-4000:]
        with MlflowClientAs(server.uri) as client:
            runs = client.search_runs([client.get_experiment_by_name("sskd-ray").experiment_id])
            stage = next(r for r in runs if r.data.tags.get("sskd.stage") == "teacher_finetune")
            logged = sorted(m.step for m in client.get_metric_history(stage.info.run_id, "loss"))
            artifacts = {a.path for a in client.list_artifacts(stage.info.run_id)}
    finally:
        if proc.poll() is None:
            proc.kill()
        if server.process is None:
            server.start()  # for the module's other tests
    history = json.loads((run_dir / "teacher" / "finetune" / "history.json").read_text())
    steps = sorted(row["iteration"] for row in history if "loss" in row)
    assert logged == steps and len(steps) >= 10, (logged, steps)
    metrics = json.loads((run_dir / "teacher" / "finetune" / "metrics.json").read_text())
    assert stage.data.metrics["mask_AP"] == pytest.approx(metrics["mask_AP"])
    assert stage.data.params["stage.iterations"] == "40" and stage.info.status == "FINISHED"
    assert {"metrics.json", "losses.png", "teacher.json"} <= artifacts
    assert all(r.info.status == "FINISHED" for r in runs)
    assert output.count("does not answer") == 1 and output.count("answers: sent the") == 1, output[-4000:]
    assert not list((run_dir / tj.PENDING_DIR).glob("*.json"))
    assert PASSWORD not in output
    assert not [p for p in run_dir.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]


class MlflowClientAs:
    """An MlflowClient with the test's admin credentials in the environment, only inside the block."""

    def __init__(self, uri: str):
        self.uri = uri

    def __enter__(self) -> MlflowClient:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", PASSWORD
        return MlflowClient(self.uri)

    def __exit__(self, *exc) -> None:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
