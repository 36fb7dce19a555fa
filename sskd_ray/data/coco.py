"""COCO instances I/O: validated loading, RLE encode/decode, per-image instance masks.

A malformed annotation (missing key, unknown category, empty or out-of-image segmentation) is
skipped and listed with its id and reason; a malformed file (not JSON, missing top-level keys)
fails with the path and key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from sskd_ray import storage


class DatasetError(ValueError):
    """The dataset file itself is unusable; the message names the file and the entry."""


def encode_rle(mask: np.ndarray) -> dict:
    """Binary mask [H, W] -> COCO RLE with `counts` as a str (JSON- and Parquet-friendly)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (compressed str/bytes counts, or uncompressed list counts) -> bool mask [H, W]."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Polygon list, uncompressed RLE or compressed RLE -> bool mask [height, width]."""
    if isinstance(segmentation, list):
        if not segmentation or any(len(poly) < 6 or len(poly) % 2 for poly in segmentation):
            raise ValueError("polygon needs >= 3 points given as x, y pairs")
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE size {segmentation['size']} != image size {[height, width]}")
        return decode_rle(segmentation)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """Tight xywh box of a bool mask, in COCO's pixel convention (as pycocotools' toBbox)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


@dataclass
class CocoDataset:
    """A validated COCO instances file: images, their good annotations, and what was skipped."""
    path: str  # a local path or a URI (sskd_ray.storage)
    image_dir: str
    categories: list[dict]
    images: list[dict]
    annotations: dict[int, list[dict]]  # image_id -> annotations
    skipped: list[dict] = field(default_factory=list)  # {"annotation_id"|"image", "reason"}

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def image_path(self, image: dict) -> str:
        return storage.resolve(self.image_dir, image["file_name"])

    def instance_masks(self, image: dict) -> tuple[np.ndarray, np.ndarray]:
        """([n, H, W] bool masks, [n] contiguous class indices 0..C-1) for one image; crowd excluded."""
        contiguous = {cid: i for i, cid in enumerate(self.category_ids)}
        h, w = image["height"], image["width"]
        anns = [a for a in self.annotations.get(image["id"], []) if not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), h, w), dtype=bool)
        for i, ann in enumerate(anns):
            masks[i] = segmentation_to_mask(ann["segmentation"], h, w)
        labels = np.array([contiguous[a["category_id"]] for a in anns], dtype=np.int64)
        return masks, labels


_REQUIRED_TOP = ("images", "annotations", "categories")
_REQUIRED_IMAGE = ("id", "file_name", "height", "width")
_REQUIRED_ANN = ("id", "image_id", "category_id", "segmentation")


def load_coco(path: str | Path, image_dir: str | Path | None = None, check_files: bool = True) -> CocoDataset:
    """Load and validate a COCO instances json; bad annotations are skipped and listed in `.skipped`."""
    path = storage.normalize(path)
    image_dir = storage.normalize(image_dir) if image_dir else storage.parent(path)
    try:
        raw = storage.read_json(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    for key in _REQUIRED_TOP:
        if key not in raw:
            raise DatasetError(f"{path}: missing top-level key '{key}'")
    categories = raw["categories"]
    for i, cat in enumerate(categories):
        if "id" not in cat or "name" not in cat:
            raise DatasetError(f"{path}: categories[{i}] lacks 'id' or 'name'")
    cat_ids = {c["id"] for c in categories}
    images, skipped = [], []
    present = _file_checker(image_dir) if check_files else None
    for i, image in enumerate(raw["images"]):
        missing = [k for k in _REQUIRED_IMAGE if k not in image]
        if missing:
            raise DatasetError(f"{path}: images[{i}] (id={image.get('id')}) lacks key(s) {missing}")
        if present is not None and not present(storage.resolve(image_dir, image["file_name"])):
            skipped.append({"image": image["file_name"], "reason": f"not found under {image_dir}"})
            continue
        images.append(image)
    by_id = {im["id"]: im for im in images}
    annotations: dict[int, list[dict]] = {im["id"]: [] for im in images}
    all_ids = {im["id"] for im in raw["images"]}
    for i, ann in enumerate(raw["annotations"]):
        reason = _annotation_problem(ann, cat_ids, all_ids)
        if reason is None and ann["image_id"] in by_id:
            image = by_id[ann["image_id"]]
            try:
                if not segmentation_to_mask(ann["segmentation"], image["height"], image["width"]).any():
                    reason = "empty segmentation"
            except (ValueError, TypeError, KeyError) as err:
                reason = f"bad segmentation: {err}"
        if reason is not None:
            skipped.append({"annotation_id": ann.get("id", f"annotations[{i}]"), "reason": reason})
        elif ann["image_id"] in by_id:
            annotations[ann["image_id"]].append(ann)
    return CocoDataset(path, image_dir, categories, images, annotations, skipped)


def _file_checker(image_dir: str):
    """location -> exists. Under an object-store folder, one listing instead of a request per image."""
    if not storage.is_uri(image_dir):
        return storage.is_file
    listed = set(storage.list_files(image_dir, recursive=True))
    return lambda location: location in listed or (not location.startswith(image_dir + "/")
                                                    and storage.is_file(location))


def _annotation_problem(ann: dict, cat_ids: set, image_ids: set) -> str | None:
    missing = [k for k in _REQUIRED_ANN if k not in ann]
    if missing:
        return f"missing key(s) {missing}"
    if ann["category_id"] not in cat_ids:
        return f"unknown category_id {ann['category_id']}"
    if ann["image_id"] not in image_ids:
        return f"unknown image_id {ann['image_id']}"
    return None


def write_coco(path: str | Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> str:
    return storage.write_text(path, json.dumps({"images": images, "annotations": annotations,
                                                "categories": categories}, separators=(",", ":")))


def subset_coco(dataset: CocoDataset, image_ids: set[int]) -> dict:
    """A COCO dict holding only `image_ids` (for evaluation on a split)."""
    images = [im for im in dataset.images if im["id"] in image_ids]
    anns = [a for im in images for a in dataset.annotations.get(im["id"], [])]
    return {"images": images, "annotations": anns, "categories": dataset.categories}
