import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sskd_ray.data.coco import decode_rle, encode_rle
from sskd_ray.eval import evaluate_masks


def _gt_as_predictions(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": 1.0} for a in gt["annotations"]]


def test_perfect_predictions_give_100(builtin_dir):
    gt = json.loads((builtin_dir / "val.json").read_text())
    result = evaluate_masks(builtin_dir / "val.json", _gt_as_predictions(gt))
    assert result["mask_AP"] == 100.0 and result["mask_AP50"] == 100.0
    present = {c["name"] for c in gt["categories"]
               if any(a["category_id"] == c["id"] for a in gt["annotations"])}
    assert all(result["per_class_AP"][name] == pytest.approx(100.0) for name in present)
    assert result["mask_APl"] is None  # no large objects in 64-px scenes: undefined, not 0


def test_empty_predictions_give_zero(builtin_dir):
    result = evaluate_masks(str(builtin_dir / "val.json"), [])
    assert result["mask_AP"] == 0.0 and result["num_predictions"] == 0


def test_agrees_with_pycocotools_on_a_perturbed_set(builtin_dir):
    gt = json.loads((builtin_dir / "val.json").read_text())
    rng = np.random.default_rng(0)
    preds = []
    for p in _gt_as_predictions(gt):
        mask = decode_rle(p["segmentation"])
        mask = np.roll(mask, int(rng.integers(-3, 4)), axis=1)  # shift: IoU drops below 1
        if rng.random() < 0.2:
            p["category_id"] = int(rng.integers(1, 11))  # some wrong classes
        preds.append({**p, "segmentation": encode_rle(mask), "score": float(rng.random())})
    ours = evaluate_masks(builtin_dir / "val.json", preds)

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(builtin_dir / "val.json"))
        dt = coco.loadRes([{**p, "segmentation": {**p["segmentation"],
                                                  "counts": p["segmentation"]["counts"].encode()}}
                           for p in preds])
        ev = COCOeval(coco, dt, iouType="segm")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert abs(ours["mask_AP"] - 100 * ev.stats[0]) < 1e-9
    assert abs(ours["mask_AP50"] - 100 * ev.stats[1]) < 1e-9
    assert 0 < ours["mask_AP"] < 100


def test_class_agnostic_ap_ignores_the_class(builtin_dir):
    """Perfect masks with every class wrong: per-class AP 0, class-agnostic AP 100."""
    gt = json.loads((builtin_dir / "val.json").read_text())
    preds = [{**p, "category_id": p["category_id"] % 10 + 1} for p in _gt_as_predictions(gt)]
    result = evaluate_masks(builtin_dir / "val.json", preds)
    assert result["mask_AP"] == 0.0
    assert result["mask_AP_agnostic"] == pytest.approx(100.0) and result["mask_AP50_agnostic"] == pytest.approx(100.0)
