"""The one prediction loop: read and decode images, resize them at their own aspect ratio, predict in
padded batches, and map each image's instances back to its own size.

Labeling (label/predictor.py), prediction for users (`Student.predict`, deploy/predict.py), the
report's prediction grid and evaluation (eval/model_eval.py) all run it; they differ only in which
instances they keep (`select`: `postprocess.select_instances` for a final set of instances,
`postprocess.instances_from_output` for COCO AP).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from sskd_ray import storage
from sskd_ray.data.decode import decode_image
from sskd_ray.data.resize import InferenceSizes, prepare_arrays, size_multiple
from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.postprocess import Instance

MAX_PIXELS = 40_000_000  # decompression-bomb guard: larger images are refused with a reason
# (model output, original sizes, image_sizes=content sizes, input_size=padded frame) -> instances per image
Select = Callable[..., list[list[Instance]]]


def read_image(path: str, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray | None, str]:
    """A local path or URI -> ((H, W, 3) uint8, "") or (None, why it could not be read)."""
    try:
        data = storage.read_bytes(path)
    except OSError as err:
        return None, f"cannot read: {err}"
    return decode_image(data, max_pixels)


def read_images(images: Iterable[dict], max_pixels: int = MAX_PIXELS,
                errors: list[dict] | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """(listing entry, image) for each entry ({"path", ...}) that can be read, lazily; the others are
    appended to `errors` as {"path", "reason"}."""
    for im in images:
        array, reason = read_image(im["path"], max_pixels)
        if array is None:
            if errors is not None:
                errors.append({"path": im["path"], "reason": reason})
        else:
            yield im, array


@torch.no_grad()
def predict_arrays(model: nn.Module, items: Iterable[tuple[Any, np.ndarray]], sizes: InferenceSizes, select: Select,
                   batch_size: int = 8, device: torch.device | str | None = None
                   ) -> Iterator[tuple[Any, np.ndarray, list[Instance]]]:
    """(key, image) pairs -> (key, image, instances) in the same order, `batch_size` images per forward.
    Each image is resized to short side `sizes.short_side` (long side at most `sizes.max_side`) and the
    batch padded to one frame; instances come back with masks at the image's own size. Runs on the
    model's device unless `device` says otherwise; the model should be in eval mode."""
    device = device or next(model.parameters()).device
    multiple = size_multiple(model)
    chunk: list[tuple[Any, np.ndarray]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield from _predict_chunk(model, chunk, sizes, select, multiple, device)
            chunk = []
    if chunk:
        yield from _predict_chunk(model, chunk, sizes, select, multiple, device)


def _predict_chunk(model: nn.Module, chunk: list[tuple[Any, np.ndarray]], sizes: InferenceSizes, select: Select,
                   multiple: int, device) -> list[tuple[Any, np.ndarray, list[Instance]]]:
    arrays = [array for _, array in chunk]
    batch, content = prepare_arrays(arrays, sizes.short_side, sizes.max_side, multiple, device)
    out: SegOutput = model(batch, image_sizes=content)
    found = select(out, [a.shape[:2] for a in arrays], image_sizes=content, input_size=tuple(batch.shape[-2:]))
    return [(key, array, instances) for (key, array), instances in zip(chunk, found)]
