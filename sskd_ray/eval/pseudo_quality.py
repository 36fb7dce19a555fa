"""How good a labeling pass's pseudo-labels are, against the pool's held-back ground truth.

The built-in benchmark keeps the unlabeled pool's annotations (the pipeline never trains on them);
a user's pool without annotations has no quality numbers. Beside mask AP / AP50 (pycocotools, as the
val split), the numbers a student sees as targets: precision and recall of the kept pseudo-labels,
and how many there are per image against how many objects there are.

Matching follows COCOeval's rule at one IoU: predictions in descending score order each take the
unmatched ground-truth instance of the same class with the highest mask IoU, if that IoU is >= 0.5;
one-to-one. Crowd annotations (`iscrowd` 1) are neither counted nor matched.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from sskd_ray.eval.coco_eval import as_coco_api, evaluate_masks

MATCH_IOU = 0.5


def count_matches(dt_rles: list[dict], dt_labels: np.ndarray, dt_scores: np.ndarray, gt_rles: list[dict],
                  gt_labels: np.ndarray, iou_threshold: float = MATCH_IOU) -> int:
    """True positives of one image: class-aware, one-to-one, greedy by score (see the module doc).
    RLEs as pycocotools takes them (bytes counts); labels are category ids."""
    if not dt_rles or not gt_rles:
        return 0
    order = np.argsort(-np.asarray(dt_scores), kind="stable")
    ious = np.asarray(mask_utils.iou([dt_rles[i] for i in order], gt_rles, [0] * len(gt_rles)))  # (D, G)
    ious = np.where(np.asarray(dt_labels)[order][:, None] == np.asarray(gt_labels)[None, :], ious, -1.0)
    taken = np.zeros(len(gt_rles), dtype=bool)
    for row in ious:  # one detection at a time: the greedy order is the point
        row = np.where(taken, -1.0, row)
        best = int(row.argmax())
        if row[best] >= iou_threshold:
            taken[best] = True
    return int(taken.sum())


def _as_rle(segmentation: dict) -> dict:
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def pseudo_label_quality(coco_gt: str | Path | dict | COCO, results: list[dict[str, Any]],
                         iou_threshold: float = MATCH_IOU) -> dict[str, Any]:
    """Pseudo-labels (COCO result dicts, RLE masks) against the pool's ground truth -> `mask_AP`,
    `mask_AP50`, `mask_AP_agnostic` (0-100), `precision`, `recall` (0-1; None with no prediction / no
    ground truth), `matched`, `predictions`, `ground_truth`, `images` (the ground truth's images,
    labels for other images are ignored), `instances_per_image`, `gt_per_image`, `match_iou`."""
    gt = as_coco_api(coco_gt)
    image_ids = gt.getImgIds()
    by_image = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    matched = predictions = ground_truth = 0
    for image_id in image_ids:
        anns = [a for a in gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        dts = by_image.get(image_id, [])
        matched += count_matches([_as_rle(d["segmentation"]) for d in dts],
                                 np.array([d["category_id"] for d in dts]), np.array([d["score"] for d in dts]),
                                 [gt.annToRLE(a) for a in anns], np.array([a["category_id"] for a in anns]),
                                 iou_threshold)
        predictions += len(dts)
        ground_truth += len(anns)
    ap = evaluate_masks(gt, results)
    images = len(image_ids)
    return {"mask_AP": ap["mask_AP"], "mask_AP50": ap["mask_AP50"], "mask_AP_agnostic": ap["mask_AP_agnostic"],
            "precision": matched / predictions if predictions else None,
            "recall": matched / ground_truth if ground_truth else None,
            "matched": matched, "predictions": predictions, "ground_truth": ground_truth, "images": images,
            "instances_per_image": predictions / images if images else None,
            "gt_per_image": ground_truth / images if images else None, "match_iou": iou_threshold}
