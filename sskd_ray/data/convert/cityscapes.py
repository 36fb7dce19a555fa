"""Cityscapes `gtFine` instance annotations -> COCO instances json.

In `gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png` a pixel of an instance of a thing class
holds `label_id * 1000 + k`; values below 1000 are a plain label id (stuff, or a thing region
without instance separation, i.e. crowd), and are ignored here. The eight thing classes of the
instance benchmark and their Cityscapes label ids are below (from the Cityscapes label table).
Images are `leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`; file names in the json are
relative to `leftImg8bit/`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sskd_ray.data.coco import encode_rle, mask_to_bbox, write_coco

THING_CLASSES = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train", 32: "motorcycle",
                 33: "bicycle"}


def instances_from_ids(ids: np.ndarray, min_area: int = 1) -> list[tuple[int, np.ndarray]]:
    """(H, W) instanceIds -> [(label_id, mask)] for thing-class instances, in id order."""
    out = []
    for value in np.unique(ids):
        if value < 1000:
            continue
        label = int(value) // 1000
        if label not in THING_CLASSES:
            continue
        mask = ids == value
        if mask.sum() >= min_area:
            out.append((label, mask))
    return out


def convert_cityscapes(root: str | Path, split: str, out: str | Path, min_area: int = 1) -> dict:
    """Write the COCO json for one split; returns counts {images, annotations, skipped}."""
    root = Path(root)
    gt_dir = root / "gtFine" / split
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{gt_dir} not found: --root must hold gtFine/ and leftImg8bit/")
    images, annotations, skipped = [], [], []
    for ann_path in sorted(gt_dir.glob("*/*_gtFine_instanceIds.png")):
        stem = ann_path.name[: -len("_gtFine_instanceIds.png")]
        rel = Path(split) / ann_path.parent.name / f"{stem}_leftImg8bit.png"
        if not (root / "leftImg8bit" / rel).is_file():
            skipped.append({"file": str(ann_path), "reason": f"no image leftImg8bit/{rel}"})
            continue
        try:
            ids = np.asarray(Image.open(ann_path)).astype(np.int64)
        except OSError as err:
            skipped.append({"file": str(ann_path), "reason": f"unreadable: {err}"})
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": str(rel), "height": int(ids.shape[0]), "width": int(ids.shape[1])})
        for label, mask in instances_from_ids(ids, min_area):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": mask_to_bbox(mask),
                                "iscrowd": 0})
    categories = [{"id": i, "name": n, "supercategory": "thing"} for i, n in THING_CLASSES.items()]
    write_coco(out, images, annotations, categories)
    return {"images": len(images), "annotations": len(annotations), "skipped": skipped}
