"""The user's main job, end to end: `ray start --head`, then
`ray job submit --working-dir . -- python jobs/full_pipeline.py --smoke`; its MLflow runs (on a real
MLflow server, reached through a URI carrying a password); and a re-run of the finished pipeline,
which must train nothing again. Issue 22: the password planted in the tracking URI and a secret
planted in an image URI of the config are found nowhere: not in MLflow's database, not in any file
of the run folder, not in the job's output."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ("teacher_finetune", "teacher_selftrain", "distill", "refine", "baseline")
SECRET = "s3cret"
SECRET_IMAGES = f"s3://sskd-bucket/pool?access_key=AKIDEXAMPLE&secret_key={SECRET}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # the job's `python` must be this environment's, whether or not the venv is activated
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if (Path.home() / ".ray" / "auth_token").is_file():  # the head turns token auth on (docs/ray_notes.md)
        env["RAY_AUTH_MODE"] = "token"
    return env


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend; yields (uri with a planted password,
    backend db path). The server has no auth: it ignores the basic-auth header MLflow's client sends."""
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (folder / "server.log").open("w")
    server = subprocess.Popen([BIN / "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                               "--default-artifact-root", (folder / "artifacts").as_uri(), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"http://alice:{SECRET}@127.0.0.1:{port}", folder / "server.db"
    os.killpg(server.pid, 15)
    server.wait(timeout=30)


def _planted(mlflow_server) -> list[str]:
    return [f"tracking.uri={mlflow_server[0]}", f"data.train_images={SECRET_IMAGES}"]


def _planted_config(folder: Path, mlflow_server) -> str:
    """The same secrets in a config file: `ray job submit` itself prints the entrypoint's command line
    (Ray's job log starts with it), so secrets on a submitted command line leak outside this project."""
    import yaml

    values = yaml.safe_load((REPO / "configs" / "default.yaml").read_text()) or {}
    values.setdefault("tracking", {})["uri"] = mlflow_server[0]
    values.setdefault("data", {})["train_images"] = SECRET_IMAGES
    path = folder / "planted.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def submitted_run(tmp_path_factory, mlflow_server):
    run_dir = tmp_path_factory.mktemp("job") / "run"
    env = _env()
    port, dash = _free_port(), _free_port()
    subprocess.run([BIN / "ray", "start", "--head", f"--port={port}", "--num-cpus=4", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--include-dashboard=true", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        start = time.perf_counter()
        job = subprocess.run([BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", ".",
                              "--", "python", "jobs/full_pipeline.py", "--smoke", "--run-dir", str(run_dir),
                              "--config", _planted_config(run_dir.parent, mlflow_server)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - start
    finally:
        subprocess.run([BIN / "ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
    return run_dir, job, seconds


def test_job_submit_runs_the_smoke_pipeline(submitted_run):
    run_dir, job, seconds = submitted_run
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in (job.stdout + job.stderr).lower()
    report = (run_dir / "report.md").read_text()
    for row in ("Teacher, before adaptation", "Teacher, adapted", "Student, supervised only", "Student after transfer",
                "Student after refinement"):
        assert row in report
        # the job prints the report's table as it ends, row for row
        assert next(line for line in report.splitlines() if line.startswith(f"| {row}")) in job.stdout
    assert (run_dir / "losses.png").stat().st_size > 10_000
    assert (run_dir / "student" / "final" / "model.safetensors").is_file()
    for stage in ("teacher/finetune", "teacher/selftrain", "student/distill", "student/refine", "student/baseline"):
        metrics = json.loads((run_dir / stage / "metrics.json").read_text())
        assert metrics["mask_AP"] is not None and metrics["iterations"] >= 2
        assert 0.0 <= metrics["mask_AP_agnostic"] <= 100.0
        # the held-out test split, scored once at the end beside val; the report's table reads test
        assert 0.0 <= metrics["test_mask_AP"] <= 100.0 and "test_mask_AP_agnostic" in metrics
    assert 0.0 <= json.loads((run_dir / "teacher" / "initial" / "metrics.json").read_text())["test_mask_AP"] <= 100.0
    assert "| model | test mask AP |" in report and "## Mask AP on the test split" in report
    test_ids = {im["id"] for im in json.loads((run_dir / "splits" / "test.json").read_text())["images"]}
    val_ids = {im["id"] for im in json.loads((run_dir / "splits" / "val.json").read_text())["images"]}
    assert len(test_ids) == 8 and not test_ids & val_ids
    assert "class-agnostic AP" in report
    summary = json.loads((run_dir / "pseudo" / "adapted" / "summary.json").read_text())
    assert summary["images_labeled"] == 18  # the 75 % unlabeled part of the 24 smoke images
    # the pool's held-back ground truth measures each pass's labels: summary and a report row per pass
    assert summary["quality"]["ground_truth"] > 0 and "recall" in summary["quality"]
    assert "| finetune teacher |" in report and "| adapted teacher |" in report


def _runs(db: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("sskd-ray")
    return client, client.search_runs([exp.experiment_id])


def test_mlflow_holds_a_parent_and_a_child_per_stage(submitted_run, mlflow_server):
    run_dir, job, _ = submitted_run
    assert job.returncode == 0
    client, runs = _runs(mlflow_server[1])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.data.tags.get("sskd.stage"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    for stage in STAGES:
        assert "mask_AP" in children[stage].data.metrics, stage
        assert children[stage].data.params["stage.iterations"]
        assert len(client.get_metric_history(children[stage].info.run_id, "loss")) >= 2  # a curve, not a point
    assert sum(1 for r in runs if r.data.tags.get("sskd.stage") == "pseudo_label") == 2
    assert parent.data.params["loss.temperature"] == "0.1"
    assert "refine.mask_AP" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "losses.png"} <= artifacts
    assert parent.data.params["tracking.uri"] == f"http://***@{mlflow_server[0].rsplit('@', 1)[1]}"
    assert parent.data.params["data.train_images"] == "s3://sskd-bucket/pool?access_key=***&secret_key=***"


def test_planted_secrets_are_nowhere(submitted_run, mlflow_server):
    """The password in the tracking URI and the key in an image URI: not in MLflow's database, not in
    any file of the run folder (config.yaml, report.md, summary.json, MLflow artifacts ...), not in the
    job's output; and the run did reach the server (its runs are there)."""
    run_dir, job, _ = submitted_run
    assert job.returncode == 0
    assert SECRET not in job.stdout + job.stderr
    assert SECRET.encode() not in mlflow_server[1].read_bytes()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 50 and {"config.yaml", "report.md", "summary.json"} <= {p.name for p in files}
    leaking = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaking == []
    assert not (run_dir / "mlflow.db").exists()  # everything went to the server


def test_rerun_of_a_finished_pipeline_trains_nothing(submitted_run, mlflow_server):
    run_dir, job, _ = submitted_run
    assert job.returncode == 0
    checkpoints = sorted(str(p) for p in (run_dir / "ray_train").rglob("checkpoint_*"))
    _, runs_before = _runs(mlflow_server[1])
    again = subprocess.run([sys.executable, "jobs/full_pipeline.py", "--smoke", "--run-dir", str(run_dir),
                            *_planted(mlflow_server)],
                           cwd=REPO, env={**{k: v for k, v in _env().items() if k != "RAY_ADDRESS"}, "SSKD_RAY_LOCAL": "1"},
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in STAGES:
        assert f"[{stage}] already done" in again.stdout
    assert "RayTrainWorker" not in again.stdout + again.stderr
    assert sorted(str(p) for p in (run_dir / "ray_train").rglob("checkpoint_*")) == checkpoints
    assert SECRET not in again.stdout + again.stderr
    _, runs_after = _runs(mlflow_server[1])
    assert len(runs_after) == len(runs_before)  # the parent was reopened, no new child runs
