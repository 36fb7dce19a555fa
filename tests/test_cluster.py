"""cluster.yaml validated with Ray's own autoscaler schema (offline), and the KubeRay manifest's
shape; every config in configs/ is covered by test_config.py."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_with_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config  # private: pinned Ray below

    assert ray.__version__ == "2.60.0", "the autoscaler helpers are private API: re-check them on a new Ray"
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    types = config["available_node_types"]
    assert set(types) == {"head", "gpu_train", "gpu_label"} and config["head_node_type"] == "head"
    for name, node in types.items():
        for key, value in node["resources"].items():
            assert isinstance(value, int), f"{name}.resources.{key} must be an integer"
    assert types["head"]["resources"] == {"CPU": 0, "GPU": 0}
    assert types["gpu_train"]["resources"]["GPU"] >= 2 and types["gpu_label"]["resources"]["GPU"] == 1
    assert types["gpu_label"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert raw["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert any("pip install" in c and "sskd-ray" in c for c in raw["setup_commands"])


def test_cluster_yaml_rejects_what_ray_rejects():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_train"]["unknown_field"] = 1
    with pytest.raises(Exception):
        validate_config(prepare_config(raw))


def test_kuberay_rayjob_shape():
    job = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python jobs/full_pipeline.py")
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    groups = cluster["workerGroupSpecs"]
    assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups)
    for pod in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in groups]:
        container = pod["spec"]["containers"][0]
        assert container["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
        mounts = {m["name"] for m in container["volumeMounts"]}
        assert mounts <= {v["name"] for v in pod["spec"]["volumes"]}


CHECK = """
import sys, time
import ray
from sskd_ray.ray_setup import check_shared_storage
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.time() + 90
while sum(n["Alive"] for n in ray.nodes()) < 2:
    assert time.time() < deadline, "the second node never joined"
    time.sleep(1)
for path in sys.argv[2:]:
    try:
        check_shared_storage(path)
        print("SHARED", path)
    except RuntimeError as err:
        print("REFUSED", err)
"""


@pytest.mark.slow
def test_multi_node_run_refuses_storage_one_node_cannot_see(tmp_path):
    """Two real Ray nodes on this machine; the second runs in its own mount namespace where the head's
    `hidden` folder is an empty tmpfs (what a head-local disk looks like from another machine). The
    check before each stage must refuse `hidden`, naming a node, and accept `shared`."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.fail("this test needs util-linux's `unshare` (root, mount namespaces) to hide a folder from one node")
    hidden, shared = tmp_path / "hidden", tmp_path / "shared"
    hidden.mkdir()
    shared.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    if (Path.home() / ".ray" / "auth_token").is_file():  # the head turns token auth on (RAY_NOTES.md)
        env["RAY_AUTH_MODE"] = "token"
    address = f"127.0.0.1:{port}"
    subprocess.run([bin_dir / "ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=180)
    try:
        worker = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f'mount -t tmpfs sskd-hidden "{hidden}" && "{bin_dir / "ray"}" start --address={address} --num-cpus=1'],
            env=env, capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        check = subprocess.run([sys.executable, "-c", CHECK, address, str(hidden), str(shared)], env=env,
                               capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([bin_dir / "ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    lines = check.stdout.splitlines()
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert len(refused) == 1 and str(hidden) in refused[0] and "not visible from node" in refused[0], lines
    assert "s3://" in refused[0]  # the message says what to use instead
    assert f"SHARED {shared}" in lines
    assert list(hidden.iterdir()) == []  # the marker is cleaned up on the head's side too


INIT = """
import json
from sskd_ray.ray_setup import init_ray
info = init_ray()
print("INFO", json.dumps(info))
"""


def _clean_env() -> dict:
    import os
    import sys

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    for key in ("RAY_ADDRESS", "SSKD_RAY_LOCAL"):
        env.pop(key, None)
    if (Path.home() / ".ray" / "auth_token").is_file():  # the head turns token auth on (RAY_NOTES.md)
        env["RAY_AUTH_MODE"] = "token"
    return env


def _run_init(env: dict, timeout: float = 300) -> tuple[dict, str]:
    """init_ray in a fresh process: (its returned info, its stdout)."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", INIT], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("INFO "))
    assert "ray: " in result.stdout  # it says what it did
    return json.loads(line[len("INFO "):]), result.stdout


def _init_info(env: dict) -> dict:
    return _run_init(env)[0]


@pytest.mark.slow
def test_init_ray_joins_a_running_head_or_starts_its_own(tmp_path):
    """Issue 22 (3): with `ray start --head` running and RAY_ADDRESS unset, a job joins that cluster (it
    used to crash: 'num_cpus and num_gpus must not be provided'); SSKD_RAY_LOCAL=1 gets a private Ray,
    except in the driver of a submitted job."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import shutil

    ray_tmp = _short_ray_tmpdir()  # this head's address file, not the machine's /tmp/ray one
    env = {**_clean_env(), "RAY_TMPDIR": ray_tmp}
    address_file = Path(ray_tmp) / "ray" / "ray_current_cluster"
    # --block: the head lives as long as this process, and stopping it stops only this cluster
    head = subprocess.Popen([Path(sys.executable).parent / "ray", "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=3", "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        # up = `ray start` wrote its address (its last step), not only the GCS port open: on a loaded
        # machine the file came more than 2 s after the port, and a job then found no head
        while not (address_file.is_file() and address_file.read_text().strip().endswith(f":{port}")):
            assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
            time.sleep(0.5)
        joined = _init_info(env)
        local = _init_info({**env, "SSKD_RAY_LOCAL": "1"})
        # the driver of a submitted job (Ray's job supervisor sets these two): joins even with SSKD_RAY_LOCAL=1
        submitted = _init_info({**env, "SSKD_RAY_LOCAL": "1", "RAY_ADDRESS": f"127.0.0.1:{port}",
                                "RAY_JOB_CONFIG_JSON_ENV_VAR": '{"runtime_env": {}}'})
    finally:
        head.terminate()
        head.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert joined["mode"] == "joined the Ray cluster" and joined["address"].endswith(f":{port}")
    assert joined["CPU"] == 3 and joined["GPU"] == 0
    assert local["mode"] == "started a local Ray" and not local["address"].endswith(f":{port}") and local["CPU"] >= 4
    assert submitted["mode"] == "joined the Ray cluster" and submitted["address"].endswith(f":{port}")


@pytest.mark.slow
def test_labeling_survives_losing_a_node(builtin_dir, tmp_path):
    """Issue 22 (6a), the way Ray tests itself (`ray.cluster_utils.Cluster`, several nodes in one
    process tree): labeling with one actor on each of two worker nodes, one node removed after the
    first shard is written; the run finishes and the store holds every image exactly once."""
    import dataclasses
    import threading
    import time

    from ray.cluster_utils import Cluster

    from sskd_ray.config import LabelConfig, ModelConfig
    from sskd_ray.data.builtin import CLASS_NAMES
    from sskd_ray.data.pseudo_labels import read_store, shard_paths
    from sskd_ray.label.manifest import write_manifest
    from sskd_ray.label.pipeline import run_labeling
    from sskd_ray.models.build import tiny_model_config

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node runs no actor
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out = tmp_path / "out"
    spec = {"model": dataclasses.asdict(tiny_model_config(ModelConfig())), "class_names": list(CLASS_NAMES),
            "category_ids": list(range(1, 11)), "checkpoint": ""}
    manifest = write_manifest(str(builtin_dir / "images" / "train"), out)
    result: dict = {}

    def label() -> None:
        try:
            result["summary"] = run_labeling(manifest, out, spec, "tiny@0", 64,
                                             LabelConfig(images_per_shard=2, num_actors=2, batch_size=2,
                                                         score_threshold=0.0))
        except BaseException as err:  # reported by the assertion below
            result["error"] = err

    thread = threading.Thread(target=label, daemon=True)
    added_back = False
    try:
        thread.start()
        deadline = time.time() + 180
        while not shard_paths(out) and time.time() < deadline and thread.is_alive():
            time.sleep(0.05)
        shards_before = len(shard_paths(out))
        cluster.remove_node(workers[1], allow_graceful=False)
        thread.join(timeout=120)
        if thread.is_alive():  # the pool waits for its lost actor's slot: a replacement node arrives
            added_back = True
            cluster.add_node(num_cpus=1)
            thread.join(timeout=180)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"node removed after {shards_before} of 12 shards; node added back: {added_back}")
    assert 1 <= shards_before < 12, f"the node was removed after {shards_before} of 12 shards"
    assert "error" not in result, repr(result.get("error"))
    keys = read_store(out).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 24
    assert result["summary"]["images_labeled"] == 24 and result["summary"]["problems"] == []


def test_gcs_probe_tells_a_listening_port_from_a_closed_one():
    """The check before every join: a port something listens on answers, a closed one does not (at
    once, not after Ray's endless retries), and a non host:port address is left to Ray."""
    import socket

    from sskd_ray.ray_setup import _gcs_answers

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert _gcs_answers(f"127.0.0.1:{port}", 2.0)
        assert _gcs_answers(f"ray://127.0.0.1:{port}", 2.0)
    assert not _gcs_answers(f"127.0.0.1:{port}", 2.0)  # closed now
    assert _gcs_answers("auto", 2.0)


def _short_ray_tmpdir() -> str:
    """A private Ray temp folder (RAY_TMPDIR) with a short path: Ray's unix sockets live under it, and
    their paths must stay under ~107 characters, which pytest's tmp_path can exceed."""
    import tempfile

    return tempfile.mkdtemp(prefix="rt", dir="/tmp")


def test_dead_ray_address_is_a_clear_error_without_secrets():
    """RAY_ADDRESS naming a cluster that is not there fails within the connect timeout, names the
    variable, and does not print the credentials in it (Ray itself would retry for ever)."""
    import subprocess
    import sys

    env = {**_clean_env(), "RAY_ADDRESS": "ray://admin:hunter2@127.0.0.1:1"}
    result = subprocess.run([sys.executable, "-c", INIT], env=env, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no Ray cluster answers at RAY_ADDRESS=" in out and "SSKD_RAY_LOCAL=1" in out, out[-2000:]
    assert "hunter2" not in out


@pytest.mark.slow
def test_init_ray_never_joins_another_jobs_private_ray_nor_a_stale_head():
    """The CI run of 2026-12-05 hung: a job's init_ray joined, through Ray's legacy process scan
    (`address="auto"`), a private Ray another process on the machine had started and was stopping.
    With such a Ray running and `ray start`'s address file naming a head that is gone, a job starts
    its own Ray, says why, and does not wait on the dead address."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    ray_tmp = _short_ray_tmpdir()
    env = {**_clean_env(), "RAY_TMPDIR": ray_tmp}
    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(address='local', num_cpus=1, include_dashboard=False); "
                               "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        other_address = other.stdout.readline().strip()
        assert other_address, "the other process's Ray did not start"
        with socket.socket() as s:  # a port nothing listens on once closed: the stopped head
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        (Path(ray_tmp) / "ray").mkdir(exist_ok=True)
        (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead_port}")
        started = time.monotonic()
        info, stdout = _run_init(env, timeout=240)
        took = time.monotonic() - started
    finally:
        other.stdin.close()
        other.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert info["mode"] == "started a local Ray"
    assert info["address"] != other_address and not info["address"].endswith(f":{dead_port}")
    assert f"127.0.0.1:{dead_port}" in stdout and "no Ray answers there" in stdout
    assert took < 120, took


def _commands(raw: dict) -> list[str]:
    return [c for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands",
                          "worker_start_ray_commands", "initialization_commands") for c in raw.get(key, [])]


def test_cluster_yaml_control_planes_ask_for_a_secret():
    """Issue 29 (1): every `ray start` with token auth, the dashboard (Jobs API) on the head's loopback
    only, MLflow's basic-auth app on the private address, the secrets copied from files and never
    written in the file; installs from the lock."""
    import re

    text = (REPO / "cluster.yaml").read_text()
    raw = yaml.safe_load(text)
    starts = [c for c in _commands(raw) if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "0.0.0.0" not in text and "--dashboard-host=127.0.0.1" in starts[0]
    server = next(c for c in raw["head_setup_commands"] if "mlflow server" in c)
    assert "--app-name basic-auth" in server and "--host $(hostname -I" in server
    assert 'MLFLOW_AUTH_ADMIN_PASSWORD="$(cat ~/.sskd-ray/mlflow_password)"' in server
    assert raw["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert any(c.startswith("chmod 600 ~/.ray/auth_token") for c in raw["setup_commands"])
    assert all('MLFLOW_TRACKING_PASSWORD="$(cat ' in c for c in starts)  # from the file, never a literal
    assert not re.search(r"\b[0-9a-f]{32,}\b", text)  # no token in the repository
    assert any("requirements/lock-pypi.txt" in c and "--require-hashes" in c for c in raw["setup_commands"])


def test_kuberay_rayjob_uses_token_auth_from_a_secret():
    job = yaml.safe_load((REPO / "deploy" / "rayjob.yaml").read_text())
    cluster = job["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], job["spec"]["submitterPodTemplate"]] + \
        [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "sskd-ray-auth", "key": "auth_token"}
        assert "value" not in env["RAY_AUTH_TOKEN"]
        if "MLFLOW_TRACKING_PASSWORD" in env:
            assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "sskd-mlflow-auth"
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"  # reached by port-forward, no public endpoint
