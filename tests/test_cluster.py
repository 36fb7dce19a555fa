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
