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
