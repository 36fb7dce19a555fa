"""Mask AP of a model on a COCO split: resize each image keeping its aspect ratio (short side
`short_side`, long side at most `max_side`), pad a batch to one frame, predict, map each image's
content back to its own size, score with pycocotools."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sskd_ray import storage
from sskd_ray.data.coco import CocoDataset, load_coco
from sskd_ray.data.resize import prepare_arrays, size_multiple
from sskd_ray.eval.coco_eval import evaluate_masks
from sskd_ray.models.postprocess import instances_from_output, instances_to_coco


def _batches(items: list, size: int):
    for s in range(0, len(items), size):
        yield items[s:s + size]


@torch.no_grad()
def predict_coco(model: torch.nn.Module, dataset: CocoDataset, short_side: int, batch_size: int = 8,
                 top_k: int = 50, device: torch.device | str = "cpu", max_side: int = 0,
                 category_ids: list[int] | None = None) -> list[dict]:
    """COCO result dicts for every image of `dataset` (unreadable images give no predictions).
    `category_ids`: the ids of the model's classes, in its output order (stored with the model); the
    dataset's own order is only a fallback, since a val json may list its categories in another one."""
    category_ids = list(category_ids) if category_ids else dataset.category_ids
    multiple = size_multiple(model)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    for chunk in _batches(dataset.images, batch_size):
        arrays, kept = [], []
        for im in chunk:
            try:
                with Image.open(io.BytesIO(storage.read_bytes(dataset.image_path(im)))) as pil:
                    array = np.asarray(pil.convert("RGB"))
            except OSError:
                continue
            arrays.append(array)
            kept.append(im)
        if not kept:
            continue
        images, content = prepare_arrays(arrays, short_side, max_side, multiple, device)
        out = model(images, image_sizes=content)
        sizes = [(im["height"], im["width"]) for im in kept]
        found = instances_from_output(out, sizes, 0.0, top_k, image_sizes=content, input_size=tuple(images.shape[-2:]))
        for im, insts in zip(kept, found):
            results += instances_to_coco(insts, im["id"], category_ids)
    model.train(was_training)
    return results


def evaluate_model(model: torch.nn.Module, coco_json: str | Path, image_dir: str | Path, short_side: int,
                   batch_size: int = 8, device: torch.device | str = "cpu", max_side: int = 0,
                   category_ids: list[int] | None = None) -> tuple[dict, list[dict]]:
    """-> (metrics from `evaluate_masks`, the predictions). Images enter the model at their own aspect
    ratio: short side `short_side`, long side at most `max_side` (0: no cap)."""
    dataset = load_coco(coco_json, image_dir, check_files=False)
    predictions = predict_coco(model, dataset, short_side, batch_size, device=device, max_side=max_side,
                               category_ids=category_ids)
    return evaluate_masks(coco_json, predictions), predictions
