"""Mask AP of a model on a COCO split: resize each image keeping its aspect ratio (short side
`short_side`, long side at most `max_side`), pad a batch to one frame, predict, map each image's
content back to its own size, score with pycocotools."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from sskd_ray.data.coco import CocoDataset, load_coco
from sskd_ray.data.resize import InferenceSizes
from sskd_ray.eval.coco_eval import evaluate_masks
from sskd_ray.models.inference import predict_arrays, read_images
from sskd_ray.models.postprocess import instances_from_output, instances_to_coco


def predict_coco(model: torch.nn.Module, dataset: CocoDataset, short_side: int, batch_size: int = 8,
                 top_k: int = 50, device: torch.device | str = "cpu", max_side: int = 0,
                 category_ids: list[int] | None = None) -> list[dict]:
    """COCO result dicts for every image of `dataset` (unreadable images give no predictions), from the
    one prediction loop (models/inference.py) with Mask2Former's top-k (query, class) selection.
    `category_ids`: the ids of the model's classes, in its output order (stored with the model); the
    dataset's own order is only a fallback, since a val json may list its categories in another one."""
    category_ids = list(category_ids) if category_ids else dataset.category_ids
    was_training = model.training
    model.eval()
    listing = [{**im, "path": dataset.image_path(im)} for im in dataset.images]
    select = partial(instances_from_output, score_threshold=0.0, top_k=top_k)
    results: list[dict] = []
    for im, _, insts in predict_arrays(model, read_images(listing), InferenceSizes(short_side, max_side), select,
                                       batch_size, device):
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
