"""Ray Tune sweeps: space files load and expand as documented; a smoke sweep over two values of
lambda is interrupted, re-run, finishes without re-running its finished trial, and writes the table."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sskd_ray.config import ConfigError, flatten_config, load_config
from sskd_ray.tune.spaces import expand_trials, load_space

REPO = Path(__file__).resolve().parents[1]
DEFAULT = [str(REPO / "configs" / "default.yaml")]


@pytest.mark.parametrize("path", sorted((REPO / "tune_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_space_file_loads(path):
    space = load_space(path, DEFAULT)
    trials = expand_trials(space, flatten_config(load_config(DEFAULT)))
    assert trials and len({t.key for t in trials}) == len(trials)


def test_table8_runs_the_shared_default_point_once():
    space = load_space(REPO / "tune_spaces" / "table8.yaml", DEFAULT)
    trials = expand_trials(space, flatten_config(load_config(DEFAULT)))
    # (5 + 3 + 3) values, of which the three defaults are one point: 9 points x 3 seeds
    assert len(trials) == 27
    assert sum(1 for t in trials if t.overrides == {"seed": 0}) == 1


def test_bad_space_fails_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stages": ["distill"], "factors": {"loss.temprature": [0.1]}}))
    with pytest.raises(ConfigError, match="loss.temprature"):
        load_space(path, DEFAULT)


@pytest.fixture(scope="module")
def resumed_sweep(tmp_path_factory):
    """Start a 2-trial smoke sweep (one trial at a time), kill it once the first trial has
    finished, then run the same command again."""
    root = tmp_path_factory.mktemp("sweep")
    space = root / "lambda.yaml"
    space.write_text(yaml.safe_dump({"stages": ["distill"], "seeds": [0],
                                     "factors": {"loss.contrastive_weight": [0.0, 0.2]}}))
    run_dir = root / "run"
    cmd = [sys.executable, "jobs/sweep.py", "--smoke", "--space", str(space), "--run-dir", str(run_dir),
           "--max-concurrent", "1"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None and not list(run_dir.glob("trials/*/result.json")):
        time.sleep(1)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
    first.wait()
    finished = {p: p.stat().st_mtime for p in run_dir.glob("trials/*/result.json")}
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return run_dir, finished, second


@pytest.mark.long
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(resumed_sweep):
    run_dir, finished, second = resumed_sweep
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(finished) == 1  # the kill came after exactly one trial had finished
    assert "resuming the sweep" in second.stdout
    for path, mtime in finished.items():
        assert path.stat().st_mtime == mtime  # not run (nor rewritten) again
    assert len(list(run_dir.glob("trials/*/result.json"))) == 2


@pytest.mark.long
def test_sweep_table_and_mlflow_runs(resumed_sweep):
    run_dir, _, second = resumed_sweep
    assert second.returncode == 0
    rows = list(csv.DictReader((run_dir / "sensitivity.csv").open()))
    student_ap = {float(r["value"]): float(r["mean"]) for r in rows if r["role"] == "student" and r["metric"] == "mask_AP"}
    assert set(student_ap) == {0.0, 0.2}
    table = (run_dir / "sensitivity.md").read_text()
    assert "contrastive_weight = 0.0" in table and "contrastive_weight = 0.2" in table and "student mask AP" in table
    assert (run_dir / "sensitivity_contrastive_weight.png").stat().st_size > 5_000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sskd-ray").experiment_id])
    sweep = [r for r in runs if r.data.tags.get("sskd.sweep")]
    assert len(sweep) == 1
    trial_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep[0].info.run_id]
    assert len({r.data.tags["sskd.trial"] for r in trial_runs}) == 2
    assert all("mask_AP" in r.data.metrics for r in trial_runs)


def test_local_concurrency_counts_real_cores():
    """A local Ray advertises >= 4 logical CPUs on this 2-core machine; trials are sized by the real
    cores (2 trials of 2-CPU workers on 2 cores starved each other past Ray Train's start timeout)."""
    import ray

    from sskd_ray.tune.sweep import max_concurrent_trials

    ray.init(num_cpus=16, include_dashboard=False)
    try:
        cores = os.cpu_count()
        demo = load_config(DEFAULT)  # 1 worker x 2 CPUs
        smoke = load_config(DEFAULT + [str(REPO / "configs" / "smoke.yaml")])  # 1 worker x 1 CPU
        assert max_concurrent_trials(demo, ["distill"]) == max(1, min(16, cores) // 2)
        assert max_concurrent_trials(smoke, ["distill"]) == max(1, min(16, cores))
    finally:
        ray.shutdown()
