"""Validation split across a stage's workers: rank r predicts images r::world, rank 0 scores all.

Each rank runs `predict_coco` on its subset of the split; the COCO result dicts are gathered with
`torch.distributed.all_gather_object` (when a process group is up) and rank 0 scores them with
pycocotools (`evaluate_masks`). The gathered predictions are put back in the split's image order,
so the score equals a single-rank evaluation's. Every rank must call `evaluate_distributed` at the
same points: the gather is a collective.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from sskd_ray.data.coco import CocoDataset, load_coco
from sskd_ray.eval.coco_eval import evaluate_masks
from sskd_ray.eval.model_eval import predict_coco


def shard_dataset(dataset: CocoDataset, rank: int, world: int) -> CocoDataset:
    """The images r::world of `dataset` (and their annotations), as a dataset of its own."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    images = dataset.images[rank::world]
    return replace(dataset, images=images, annotations={im["id"]: dataset.annotations.get(im["id"], []) for im in images})


def gather_predictions(local: list[dict], world: int) -> list[dict]:
    """Every rank's predictions, concatenated in rank order (just `local` without a process group)."""
    if world <= 1 or not dist.is_initialized():
        return list(local)
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    return [p for part in parts for p in part]


def in_image_order(predictions: list[dict], dataset: CocoDataset) -> list[dict]:
    """Predictions sorted by their image's position in the split (stable: an image's own order is kept)."""
    position = {im["id"]: i for i, im in enumerate(dataset.images)}
    return sorted(predictions, key=lambda p: position.get(p["image_id"], len(position)))


def evaluate_distributed(model: torch.nn.Module, coco_json: str | Path, image_dir: str | Path, short_side: int,
                         rank: int = 0, world: int = 1, batch_size: int = 8,
                         device: torch.device | str = "cpu", max_side: int = 0,
                         category_ids: list[int] | None = None) -> tuple[dict | None, list[dict]]:
    """-> (metrics from `evaluate_masks` on rank 0, None elsewhere; this rank's own predictions).
    Images enter the model at their own aspect ratio (short side / long-side cap as predict_coco)."""
    dataset = load_coco(coco_json, image_dir, check_files=False)
    mine = predict_coco(model, shard_dataset(dataset, rank, world), short_side, batch_size, device=device,
                        max_side=max_side, category_ids=category_ids)
    everything = gather_predictions(mine, world)
    if rank != 0:
        return None, mine
    return evaluate_masks(coco_json, in_image_order(everything, dataset)), mine
