"""Mask AP of a model on a COCO split: resize each image to the model's input size, predict,
map instances back to the image's own size, score with pycocotools."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sskd_ray import storage
from sskd_ray.data.coco import CocoDataset, load_coco
from sskd_ray.eval.coco_eval import evaluate_masks
from sskd_ray.models.postprocess import instances_from_output, instances_to_coco


def _batches(items: list, size: int):
    for s in range(0, len(items), size):
        yield items[s:s + size]


@torch.no_grad()
def predict_coco(model: torch.nn.Module, dataset: CocoDataset, image_size: int, batch_size: int = 8,
                 top_k: int = 50, device: torch.device | str = "cpu") -> list[dict]:
    """COCO result dicts for every image of `dataset` (unreadable images give no predictions)."""
    was_training = model.training
    model.eval()
    results: list[dict] = []
    for chunk in _batches(dataset.images, batch_size):
        tensors, kept = [], []
        for im in chunk:
            try:
                with Image.open(io.BytesIO(storage.read_bytes(dataset.image_path(im)))) as pil:
                    array = np.asarray(pil.convert("RGB"))
            except OSError:
                continue
            t = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255
            tensors.append(F.interpolate(t, size=(image_size, image_size), mode="bilinear", align_corners=False)[0])
            kept.append(im)
        if not kept:
            continue
        out = model(torch.stack(tensors).to(device))
        sizes = [(im["height"], im["width"]) for im in kept]
        for im, insts in zip(kept, instances_from_output(out, sizes, 0.0, top_k)):
            results += instances_to_coco(insts, im["id"], dataset.category_ids)
    model.train(was_training)
    return results


def evaluate_model(model: torch.nn.Module, coco_json: str | Path, image_dir: str | Path, image_size: int,
                   batch_size: int = 8, device: torch.device | str = "cpu") -> tuple[dict, list[dict]]:
    """-> (metrics from `evaluate_masks`, the predictions)."""
    dataset = load_coco(coco_json, image_dir, check_files=False)
    predictions = predict_coco(model, dataset, image_size, batch_size, device=device)
    return evaluate_masks(coco_json, predictions), predictions
