"""jobs/pseudo_label.py as users run it: killed part-way, re-run, same store as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pycocotools import mask as mask_utils

from sskd_ray.data.pseudo_labels import read_store, shard_paths

ROOT = Path(__file__).resolve().parents[1]


def _job(images, out, *extra):
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT), "SSKD_RAY_LOCAL": "1"}
    env.pop("RAY_ADDRESS", None)
    return [sys.executable, str(ROOT / "jobs" / "pseudo_label.py"), "--images", str(images), "--teacher", "builtin",
            "--out", str(out), "--smoke", "label.images_per_shard=3", "label.score_threshold=0.0", *extra], env


def _store(out):
    rows = read_store(out).to_pylist()
    return sorted((r["image_id"], [(i["category_id"], round(i["score"], 4), i["segmentation"]) for i in r["instances"]])
                  for r in rows)


@pytest.mark.long
def test_killed_run_resumes_to_the_same_store(builtin_dir, tmp_path):
    images = builtin_dir / "train.json"
    # one image per shard: 24 shards, ~18 ms each on 2 cores (8 shards of 3 all landed within 230 ms,
    # between two polls of 0.2 s, and a CI-like run saw "kill landed after 8 of 8 shards")
    one = "label.images_per_shard=1"
    cmd, env = _job(images, tmp_path / "full", one)
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    full = _store(tmp_path / "full")
    assert len(full) == 24 and len({i for i, _ in full}) == 24 and len(shard_paths(tmp_path / "full")) == 24

    cmd, env = _job(images, tmp_path / "killed", one)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while len(shard_paths(tmp_path / "killed")) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    done = len(shard_paths(tmp_path / "killed"))
    assert 2 <= done < 24, f"kill landed after {done} of 24 shards"
    result = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=300)
    assert '"images_labeled": 24' in result.stdout
    assert _store(tmp_path / "killed") == full

    runs = MlflowClient(f"sqlite:///{tmp_path / 'killed' / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path / 'killed' / 'mlflow.db'}").get_experiment_by_name("sskd-ray").experiment_id])
    assert any("quality_mask_AP" in r.data.metrics for r in runs)
    assert (tmp_path / "killed" / "scores.png").stat().st_size > 1000
    _check_quality_and_no_duplicates(images, tmp_path / "killed", runs)


def _check_quality_and_no_duplicates(images, out, runs):
    """The pass measures its labels against train.json's ground truth (summary and MLflow), and the
    store holds no mask twice: no two instances of an image overlap at IoU >= label.nms_iou (0.5)."""
    gt = json.loads(Path(images).read_text())
    quality = json.loads((out / "summary.json").read_text())["quality"]
    rows = read_store(out).to_pylist()
    kept = sum(len(r["instances"]) for r in rows)
    assert quality["predictions"] == kept and quality["images"] == 24
    assert quality["ground_truth"] == len(gt["annotations"]) and quality["gt_per_image"] == pytest.approx(
        len(gt["annotations"]) / 24)
    assert quality["instances_per_image"] == pytest.approx(kept / 24)
    assert quality["precision"] == pytest.approx(quality["matched"] / kept)
    assert quality["recall"] == pytest.approx(quality["matched"] / len(gt["annotations"]))
    logged = [r.data.metrics for r in runs if "quality_precision" in r.data.metrics]
    assert logged and {"quality_recall", "quality_instances_per_image", "quality_gt_per_image",
                       "quality_mask_AP50", "quality_matched"} <= set(logged[0])
    for row in rows:
        rles = [{"size": [row["height"], row["width"]], "counts": i["segmentation"].encode()} for i in row["instances"]]
        if len(rles) > 1:
            iou = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)))
            assert (iou[~np.eye(len(rles), dtype=bool)] < 0.5).all(), f"image {row['image_id']}: a mask kept twice"


def test_empty_pool_fails_naming_the_path(tmp_path):
    """Issue 22 (5): a folder without images is an error naming it (it used to exit 0, 'images_seen 0')."""
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "readme.txt").write_text("no images here")
    cmd, env = _job(tmp_path / "pool", tmp_path / "out")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"no images in '{tmp_path / 'pool'}'" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("shard-*"))


def test_pipeline_refuses_an_empty_unlabeled_pool_before_training(tmp_path, monkeypatch):
    """Every training image labeled: nothing to pseudo-label, so the pipeline stops before its first stage."""
    import pytest

    from sskd_ray.config import ConfigError, load_config
    from sskd_ray.train.pipeline import run_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config([str(ROOT / "configs" / "default.yaml"), str(ROOT / "configs" / "smoke.yaml")],
                      ["data.labeled_fraction=1.0"])
    with pytest.raises(ConfigError, match=r"unlabeled pool is empty: .*unlabeled.json"):
        run_pipeline(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "teacher").exists()  # nothing was trained or evaluated
