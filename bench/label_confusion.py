"""Which mistakes a teacher's pseudo-labels make: found objects with the wrong class, or objects missed.

    python -m bench.label_confusion --labels runs/learning_curves/seed0/val_labels/coco_results.json \
        --truth runs/learning_curves/seed0/splits/val.json [--threshold 0.4] [--out results/learning_curves/seed0]

The labels kept at `--threshold` are matched to the ground truth class-agnostically (greedy by score,
one-to-one, mask IoU >= 0.5, as the precision / recall of sskd_ray/eval/pseudo_quality.py but
ignoring the class). Each kept label is then: right (matched, same class), wrong class (matched, other
class), or no object (unmatched); each ground-truth object found or missed. Writes the confusion
matrix (ground truth x label class, over matched pairs) as <out>/label_confusion.json and .png.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parents[1]


def match_agnostic(dts: list[dict], gts: list[dict], coco: COCO, iou: float = 0.5) -> list[tuple[int, int]]:
    """(label index, ground-truth index) pairs of one image, greedy by score, one-to-one, any class."""
    if not dts or not gts:
        return []
    order = sorted(range(len(dts)), key=lambda i: -dts[i]["score"])
    rles = [{"size": dts[i]["segmentation"]["size"], "counts": dts[i]["segmentation"]["counts"].encode()} for i in order]
    ious = np.asarray(mask_utils.iou(rles, [coco.annToRLE(g) for g in gts], [0] * len(gts)))  # (D, G)
    taken, pairs = np.zeros(len(gts), dtype=bool), []
    for row, i in zip(ious, order):
        row = np.where(taken, -1.0, row)
        best = int(row.argmax())
        if row[best] >= iou:
            taken[best] = True
            pairs.append((i, best))
    return pairs


def confusion(labels: list[dict], truth: str, threshold: float) -> dict:
    coco = COCO(truth)
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    ids = sorted(names)
    by_image = defaultdict(list)
    for r in labels:
        if r["score"] >= threshold:
            by_image[r["image_id"]].append(r)
    matrix = np.zeros((len(ids), len(ids)), dtype=int)  # ground truth x label class
    counts = {"labels": 0, "right": 0, "wrong_class": 0, "no_object": 0, "objects": 0, "found": 0}
    for image_id in coco.getImgIds():
        gts = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        dts = by_image.get(image_id, [])
        pairs = match_agnostic(dts, gts, coco)
        for i, g in pairs:
            matrix[ids.index(gts[g]["category_id"]), ids.index(dts[i]["category_id"])] += 1
        right = sum(1 for i, g in pairs if dts[i]["category_id"] == gts[g]["category_id"])
        counts.update(labels=counts["labels"] + len(dts), right=counts["right"] + right,
                      wrong_class=counts["wrong_class"] + len(pairs) - right,
                      no_object=counts["no_object"] + len(dts) - len(pairs), objects=counts["objects"] + len(gts),
                      found=counts["found"] + len(pairs))
    return {"threshold": threshold, "classes": [names[i] for i in ids], "matrix": matrix.tolist(), **counts}


def plot(result: dict, path: Path) -> None:
    from sskd_ray.eval.plots import pyplot, save_figure

    plt = pyplot()
    m = np.asarray(result["matrix"], dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(share):
        if v >= 0.05:
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
    ax.set_xticks(range(len(result["classes"])), result["classes"], rotation=60, fontsize=8)
    ax.set_yticks(range(len(result["classes"])), result["classes"], fontsize=8)
    ax.set_xlabel("pseudo-label class")
    ax.set_ylabel("ground-truth class")
    ax.set_title(f"found objects by class (row shares), labels >= {result['threshold']}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True, help="COCO results json of a labeling pass")
    parser.add_argument("--truth", required=True, help="COCO json with the ground truth of the same images")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = confusion(json.loads(Path(args.labels).read_text()), args.truth, args.threshold)
    out = Path(args.out)
    (out / "label_confusion.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "label_confusion.png")
    n = result["labels"]
    print(f"{n} labels: {result['right'] / n:.2f} right, {result['wrong_class'] / n:.2f} wrong class, "
          f"{result['no_object'] / n:.2f} on no object; {result['found'] / result['objects']:.2f} of "
          f"{result['objects']} objects found")


if __name__ == "__main__":
    main()
