"""COCO mask AP through pycocotools' COCOeval (iouType="segm"), on the 0-100 scale papers use."""
from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sskd_ray import storage


def as_coco_api(coco_gt: str | Path | dict | COCO) -> COCO:
    """Ground truth (a COCO json location, its dict or a COCO object) -> an indexed pycocotools COCO."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    data = storage.read_json(coco_gt) if isinstance(coco_gt, (str, Path)) else copy.deepcopy(coco_gt)
    data.setdefault("info", {})
    data.setdefault("licenses", [])
    for ann in data["annotations"]:  # COCOeval needs area and iscrowd; derive them when absent
        ann.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    for ann in coco.dataset["annotations"]:
        if "area" not in ann:
            from pycocotools import mask as mask_utils

            ann["area"] = float(mask_utils.area(coco.annToRLE(ann)))
    return coco


def evaluate_masks(coco_gt: str | Path | dict | COCO, predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Mask AP of `predictions` (COCO result dicts with RLE `segmentation`) against `coco_gt`.

    Returns `mask_AP`, `mask_AP50`, `mask_AP75`, `mask_APs/m/l` (0-100; None where the area range
    has no ground truth), `per_class_AP` ({category name: AP}) and the class-agnostic
    `mask_AP_agnostic` / `mask_AP50_agnostic`. Predictions for images not in `coco_gt` are ignored; no predictions give 0.
    """
    gt = as_coco_api(coco_gt)
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    keep_ids = set(gt.getImgIds())
    preds = []
    for p in predictions:
        if p["image_id"] not in keep_ids:
            continue
        seg = dict(p["segmentation"])
        if isinstance(seg.get("counts"), str):
            seg["counts"] = seg["counts"].encode("ascii")
        preds.append({**p, "segmentation": seg})
    zero = {"mask_AP": 0.0, "mask_AP50": 0.0, "mask_AP75": 0.0, "mask_APs": 0.0, "mask_APm": 0.0,
            "mask_APl": 0.0, "per_class_AP": {n: 0.0 for n in names.values()}, "mask_AP_agnostic": 0.0,
            "mask_AP50_agnostic": 0.0, "num_predictions": 0}
    if not preds or not gt.dataset["annotations"]:
        return zero
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(preds)
        ev = _run_cocoeval(gt, dt, use_categories=True)
        agnostic = _run_cocoeval(gt, dt, use_categories=False)
    # pycocotools writes -1 where a value is undefined (e.g. no large objects): report None there
    stats = [float(s) * 100 if s >= 0 else None for s in ev.stats[:6]]
    # precision: [T iou, R recall, K classes, A areas, M maxDets]; area "all", maxDets 100
    precision = ev.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[names[cat_id]] = float(np.mean(p[p > -1]) * 100) if (p > -1).any() else 0.0
    return {"mask_AP": stats[0], "mask_AP50": stats[1], "mask_AP75": stats[2], "mask_APs": stats[3],
            "mask_APm": stats[4], "mask_APl": stats[5], "per_class_AP": per_class,
            "mask_AP_agnostic": float(agnostic.stats[0]) * 100, "mask_AP50_agnostic": float(agnostic.stats[1]) * 100,
            "num_predictions": len(preds)}


def _run_cocoeval(gt: COCO, dt: COCO, use_categories: bool) -> COCOeval:
    """COCOeval on masks; `use_categories=False` is class-agnostic AP (a mask matches any ground-truth
    instance whatever its class): how well instances are found and delineated, apart from naming them."""
    ev = COCOeval(gt, dt, iouType="segm")
    ev.params.useCats = int(use_categories)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev
