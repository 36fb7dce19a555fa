"""Aspect-preserving input sizes and padded batches for inference at native aspect ratio.

An image is resized so its short side is `short_side` (the long side capped at `max_side`, as
detectron2's `ResizeShortestEdge` and Grounding-DINO's 800 / 1333 do), then the images of a batch
are padded at the bottom / right to one frame whose sides are a multiple of the model's stride.
The content size of each image inside that frame travels with the batch (`image_sizes`), so the
post-processing (`sskd_ray.models.postprocess.instances_from_output`) can crop it back out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sskd_ray.config import DataConfig


def fit_size(size: tuple[int, int], short_side: int, max_side: int = 0, multiple: int = 1) -> tuple[int, int]:
    """(H, W) -> (h, w) with the same aspect ratio: short side `short_side` (<= 0: keep the image's),
    long side at most `max_side` (<= 0: no cap), each side then rounded to a multiple of `multiple`
    (at least one multiple)."""
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {(h, w)}")
    scale = short_side / min(h, w) if short_side > 0 else 1.0
    if max_side > 0 and max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    out = []
    for side in (h, w):
        s = max(1, int(round(side * scale)))
        out.append(max(multiple, int(round(s / multiple)) * multiple) if multiple > 1 else s)
    return out[0], out[1]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) float -> (3, h, w), bilinear (antialiased when shrinking, so a 2048-px frame brought
    to 512 does not alias)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


def pad_batch(images: list[torch.Tensor], multiple: int = 1) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """[(3, h_i, w_i)] -> (images (B, 3, Hp, Wp) zero-padded at the bottom / right, [(h_i, w_i)]);
    Hp, Wp are the largest sides rounded up to `multiple`."""
    if not images:
        raise ValueError("pad_batch needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    hp = -(-max(h for h, _ in sizes) // multiple) * multiple
    wp = -(-max(w for _, w in sizes) // multiple) * multiple
    out = images[0].new_zeros(len(images), images[0].shape[0], hp, wp)
    for i, (im, (h, w)) in enumerate(zip(images, sizes)):
        out[i, :, :h, :w] = im
    return out, sizes


def prepare_arrays(arrays: list[np.ndarray], short_side: int, max_side: int, multiple: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """HWC uint8 arrays -> a padded batch at native aspect on `device` and the content sizes; each
    image is resized on `device` (a GPU resizes a 2048 x 1024 frame much faster than a CPU)."""
    resized = []
    for a in arrays:
        image = torch.from_numpy(np.require(a, requirements=["C", "W"])).to(device).permute(2, 0, 1).float() / 255
        resized.append(resize_image(image, fit_size(a.shape[:2], short_side, max_side)))
    return pad_batch(resized, multiple)


def size_multiple(model: torch.nn.Module) -> int:
    """The side multiple a model's input should have so its maps tile the frame exactly: the ViT
    patch for a DINOv2 student (it drops a partial patch), else the CNN / Hiera stride 32."""
    return int(getattr(getattr(model, "encoder", None), "patch", 32))


@dataclass
class InferenceSizes:
    """The native-aspect input sizes a model is evaluated and run at (a trained model's card holds them)."""
    short_side: int
    max_side: int = 0  # long side at most this; 0: no cap

    @classmethod
    def from_config(cls, data: DataConfig, image_size: int) -> InferenceSizes:
        """`data.eval_short_side` / `eval_max_side`; a 0 short side is the model's training size."""
        return cls(data.eval_short_side or image_size, data.eval_max_side)
