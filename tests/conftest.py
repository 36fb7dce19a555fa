import os

import pytest
import torch

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every job a test starts gets a private local Ray, never a cluster that happens to run on the machine
# (a developer's `ray start`); the tests of joining (tests/test_cluster.py) clear this themselves.
os.environ.setdefault("SSKD_RAY_LOCAL", "1")
# Ray Train's controller looks at its workers every 2 s by default: a 4-iteration smoke stage waited
# on those polls to see its workers up and done for several seconds per stage, over ~50 stages in the suite.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
# Tests that run on any device take the `device` fixture: a CPU variant (run everywhere, so CI runs the
# code path) and a CUDA variant, marked `gpu`, that skips with "needs CUDA" on a machine without one.
DEVICE_PARAMS = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, needs_cuda])]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory):
    """A small built-in dataset shared by the tests that only read it."""
    from sskd_ray.data.builtin import build_builtin_dataset

    from pathlib import Path

    return Path(build_builtin_dataset(tmp_path_factory.mktemp("fashion"), num_train=24, num_val=8, size=64,
                                      seed=0, labeled_fraction=0.25))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol HTTP server on this machine (moto's standalone server: real requests through
    pyarrow's S3 client, no cloud account). Yields the env that points S3 clients at it; the bucket
    `sskd` exists. Tests that need S3 set these variables in their process and subprocesses."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError(f"moto S3 server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}
    import pyarrow.fs as pafs

    pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", endpoint_override=endpoint,
                      allow_bucket_creation=True).create_dir("sskd")
    yield env
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's process talks to the S3 server (S3 filesystems are cached per bucket: cleared)."""
    from sskd_ray import storage

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    storage._uri_filesystem.cache_clear()
    yield s3_server
    storage._uri_filesystem.cache_clear()


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (sqlite backend store, artifacts proxied through the server as
    on the cluster), which a test can stop and start again on the same port and stores. `password`: MLflow's
    basic-auth app with an `admin` user of that password (the client reads MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD)."""

    def __init__(self, folder, password: str = ""):
        import socket
        from pathlib import Path

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.password, self.process = Path(folder), password, None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = self.folder / "server.db"

    def env(self) -> dict:
        import os

        env = dict(os.environ)
        if self.password:
            ini = self.folder / "auth.ini"
            ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{self.folder / 'auth.db'}\n"
                           f"admin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                           f"auth_cache_ttl_seconds = 600\n")  # PBKDF2 per request is slow on a loaded 2-core machine
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=self.password,
                       MLFLOW_FLASK_SERVER_SECRET_KEY="test-csrf-key-" + self.password[::-1])
        return env

    def start(self, timeout: float = 400) -> None:
        import subprocess
        import sys
        import time
        import urllib.error
        import urllib.request
        from pathlib import Path

        cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.db}",
               "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"] + (["--app-name", "basic-auth"] if self.password else [])
        log = (self.folder / "server.log").open("a")
        self.process = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=15)  # a loaded machine answers slowly
                return
            except urllib.error.HTTPError:
                return  # it answers (auth may refuse even /health)
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
