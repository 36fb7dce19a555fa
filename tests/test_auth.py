"""Issue 29 (1): the control planes the project opens ask for a secret.

A real `ray start --head` with token authentication (RAY_AUTH_MODE=token, a private token file, a
private RAY_TMPDIR and ports, HOME pointing at an empty folder so that no ~/.ray/auth_token of this
machine's stands in for the token): the Jobs API refuses a request or a `ray job submit` without the
token and accepts them with it; `init_ray` says what is missing instead of Ray's error, and joins with
the token; a project job submitted with the token runs. The configs' shape: tests/test_cluster.py.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INIT = "import json; from sskd_ray.ray_setup import init_ray; print('INFO', json.dumps(init_ray()))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")  # no ~/.ray/auth_token here
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    token_file = Path(ray_tmp) / "auth_token"
    token = secrets.token_hex(32)
    token_file.write_text(token)
    token_file.chmod(0o600)
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "HOME": str(home), "RAY_TMPDIR": ray_tmp, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    for key in ("RAY_ADDRESS", "SSKD_RAY_LOCAL", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    with_token = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    head = _start_head(with_token, port, dash, Path(ray_tmp))
    try:
        yield {"env": env, "with_token": with_token, "port": port, "dash": dash, "token": token, "ray_tmp": ray_tmp}
    finally:
        head.terminate()  # --block: ends this head only
        head.wait(timeout=120)
        _kill_session(Path(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _kill_session(ray_tmp: Path) -> None:
    """What a failed `ray start` can leave running (its GCS, dashboard, monitor): only the processes
    whose command line names this test's private RAY_TMPDIR, by pid (never `ray stop`: other Rays
    run on this machine)."""
    import signal

    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(ray_tmp).encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except OSError:  # gone meanwhile
            pass


def _start_head(env: dict, port: int, dash: int, ray_tmp: Path, tries: int = 5) -> subprocess.Popen:
    """`ray start --head --block` on private ports, up when its address file and dashboard answer; a start
    that fails (on a loaded machine the raylet gives up on its agents after a few seconds) is tried again."""
    for attempt in range(tries):
        # every port private: another Ray on this machine holds the defaults (the agent's 52365 was taken)
        private = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                           "metrics-export-port", "runtime-env-agent-port",
                                                           "ray-client-server-port")]
        head = subprocess.Popen([BIN / "ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                                 "--disable-usage-stats", *private], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 240
        while head.poll() is None and time.time() < deadline:
            if (ray_tmp / "ray" / "ray_current_cluster").is_file() and \
                    _status(f"http://127.0.0.1:{dash}/api/version") in (200, 401):
                return head
            time.sleep(1)
        head.terminate()
        head.wait(timeout=120)
        _kill_session(ray_tmp)
        shutil.rmtree(ray_tmp / "ray", ignore_errors=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    raise AssertionError(f"ray start --head did not come up in {tries} tries")


@pytest.mark.slow
def test_jobs_api_refuses_a_submission_without_the_token(token_head):
    jobs = f"http://127.0.0.1:{token_head['dash']}/api/jobs/"
    assert _status(jobs) == 401
    assert _status(jobs, token="0" * 64) == 403
    assert _status(jobs, token=token_head["token"]) == 200
    submit = [BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{token_head['dash']}", "--",
              "python", "-c", "print('the job ran')"]
    refused = subprocess.run(submit, env=token_head["env"], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "the job ran" not in refused.stdout
    assert "401" in refused.stdout + refused.stderr or "Unauthorized" in refused.stdout + refused.stderr
    accepted = subprocess.run(submit, env=token_head["with_token"], capture_output=True, text=True, timeout=300)
    assert accepted.returncode == 0, accepted.stdout[-3000:] + accepted.stderr[-3000:]
    assert "the job ran" in accepted.stdout and "succeeded" in accepted.stdout
    for output in (refused, accepted):
        assert token_head["token"] not in output.stdout + output.stderr


@pytest.mark.slow
def test_init_ray_and_a_project_job_against_a_token_cluster(token_head, builtin_dir, tmp_path):
    address = f"127.0.0.1:{token_head['port']}"
    began = time.monotonic()
    refused = subprocess.run([sys.executable, "-c", INIT], env={**token_head["env"], "RAY_ADDRESS": address},
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "requires token authentication" in refused.stderr and "RAY_AUTH_MODE=token" in refused.stderr, \
        refused.stderr[-3000:]
    assert time.monotonic() - began < 120
    joined = subprocess.run([sys.executable, "-c", INIT], env={**token_head["with_token"], "RAY_ADDRESS": address},
                            capture_output=True, text=True, timeout=300)
    assert joined.returncode == 0, joined.stderr[-3000:]
    info = json.loads(next(line for line in joined.stdout.splitlines() if line.startswith("INFO "))[5:])
    assert info["mode"] == "joined the Ray cluster" and info["CPU"] == 2
    job = subprocess.run([BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{token_head['dash']}",
                          "--working-dir", str(ROOT), "--", "python", "jobs/pseudo_label.py", "--images",
                          str(builtin_dir / "train.json"), "--teacher", "builtin", "--smoke", "--out",
                          str(tmp_path / "labels")], env=token_head["with_token"], capture_output=True, text=True,
                         timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "joined the Ray cluster" in job.stdout and '"images_labeled": 24' in job.stdout
    logs = Path(token_head["ray_tmp"]) / "ray" / "session_latest" / "logs"
    leaking = [p.name for p in logs.rglob("*") if p.is_file() and token_head["token"].encode() in p.read_bytes()]
    assert leaking == [], f"the token is written in Ray's logs: {leaking}"
    assert token_head["token"] not in job.stdout + job.stderr + joined.stdout + joined.stderr
