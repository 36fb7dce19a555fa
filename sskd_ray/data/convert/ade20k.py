"""ADE20K instance annotations (the SceneParsing challenge's instance format) -> COCO instances json.

Layout: `<root>/images/<split>/<stem>.jpg` and `<root>/annotations_instance/<split>/<stem>.png`,
split `training` or `validation`. In an annotation PNG the R channel holds the category (1..100,
the 100 thing classes; 0 = none) and the G channel the instance id within the image (0 = none).
Category names come from `<root>/instanceInfo100_train.txt` (or `_val.txt`) when present (first
column the id, second the name, tab- or whitespace-separated, one header line allowed); otherwise
they are named `class_<id>`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from sskd_ray.data.coco import encode_rle, mask_to_bbox, write_coco

NUM_THING_CLASSES = 100


def read_category_names(root: Path) -> dict[int, str]:
    names = {}
    for candidate in ("instanceInfo100_train.txt", "instanceInfo100_val.txt"):
        path = root / candidate
        if path.is_file():
            for line in path.read_text().splitlines():
                parts = re.split(r"\t+|\s{2,}", line.strip())
                if len(parts) >= 2 and parts[0].isdigit():
                    names[int(parts[0])] = parts[1].split(",")[0].strip()
            break
    return {i: names.get(i, f"class_{i}") for i in range(1, NUM_THING_CLASSES + 1)}


def instances_from_png(ann: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(H, W, 3) annotation -> [(category, mask)]: one per (category, instance id) pair, both > 0."""
    cat, ins = ann[..., 0].astype(np.int64), ann[..., 1].astype(np.int64)
    out = []
    for key in np.unique(cat * 256 + ins):
        c, i = int(key) // 256, int(key) % 256
        if c == 0 or i == 0 or c > NUM_THING_CLASSES:
            continue
        out.append((c, (cat == c) & (ins == i)))
    return out


def convert_ade20k(root: str | Path, split: str, out: str | Path) -> dict:
    root = Path(root)
    ann_dir = root / "annotations_instance" / split
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"{ann_dir} not found: --root must hold images/ and annotations_instance/")
    names = read_category_names(root)
    images, annotations, skipped = [], [], []
    for ann_path in sorted(ann_dir.glob("*.png")):
        matches = [p for p in (root / "images" / split).glob(f"{ann_path.stem}.*")]
        if not matches:
            skipped.append({"file": str(ann_path), "reason": f"no image images/{split}/{ann_path.stem}.*"})
            continue
        try:
            ann = np.asarray(Image.open(ann_path).convert("RGB"))
        except OSError as err:
            skipped.append({"file": str(ann_path), "reason": f"unreadable: {err}"})
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": str(Path(split) / matches[0].name),
                       "height": int(ann.shape[0]), "width": int(ann.shape[1])})
        for category, mask in instances_from_png(ann):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": mask_to_bbox(mask),
                                "iscrowd": 0})
    write_coco(out, images, annotations, [{"id": i, "name": n} for i, n in names.items()])
    return {"images": len(images), "annotations": len(annotations), "skipped": skipped}
