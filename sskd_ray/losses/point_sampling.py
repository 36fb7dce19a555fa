"""Point sampling so mask losses cost O(points), not O(pixels) (the idea of PointRend / Mask2Former).

When a prediction has no more pixels than the points asked for (the demo's 32 x 32 masks against
Mask2Former's 3,136 or 12,544 points), sampling only repeats pixels at random: the mask losses and
the matching cost then take every pixel once (`is_dense`), the ground truth area-averaged onto the
prediction's grid (`grid_targets`) - the limit of uniform point sampling, computed with less work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """maps (n, H, W), coords (n, P, 2) as (x, y) in [0, 1] -> values (n, P), bilinear."""
    grid = (2 * coords - 1)[:, :, None, :]  # (n, P, 1, 2) in [-1, 1]
    return F.grid_sample(maps[:, None].float(), grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def real_sizes(pad_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool, True on real pixels at the top-left (padding at the bottom / right) ->
    (B, 2) long: (h_real, w_real) of each image."""
    return torch.stack([pad_mask.any(2).sum(1), pad_mask.any(1).sum(1)], dim=1)


def real_extent(pad_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool as in `real_sizes` -> (B, 2) float32: the (x, y) share of the frame the real
    pixels span, i.e. (w_real / W, h_real / H)."""
    h, w = pad_mask.shape[-2:]
    rows, cols = real_sizes(pad_mask).float().unbind(1)
    return torch.stack([cols / w, rows / h], dim=1)


def random_points(n: int, num_points: int, device: torch.device, generator: torch.Generator | None = None,
                  extent: torch.Tensor | None = None) -> torch.Tensor:
    """(n, num_points, 2) uniform (x, y) in [0, 1)^2, or in [0, extent_x) x [0, extent_y) per row
    when `extent` (n, 2) is given: points on the real pixels of a frame padded at the bottom / right."""
    coords = torch.rand(n, num_points, 2, device=device, generator=generator)
    return coords if extent is None else coords * extent.to(device=device, dtype=coords.dtype)[:, None, :]


def uncertain_points(logits: torch.Tensor, num_points: int, oversample: float, importance: float,
                     generator: torch.Generator | None = None, extent: torch.Tensor | None = None) -> torch.Tensor:
    """(n, H, W) mask logits -> (n, num_points, 2) coords: the `importance` share are the most
    uncertain (|logit| smallest) of `oversample * num_points` random candidates, the rest uniform.
    `extent` (n, 2): every point (candidates and the uniform rest) lies in [0, extent) (`real_extent`
    of the batch's padding mask)."""
    n = logits.shape[0]
    cand = random_points(n, int(num_points * oversample), logits.device, generator, extent)
    uncertainty = -point_sample(logits.detach(), cand).abs()  # (n, M)
    k = int(importance * num_points)
    top = uncertainty.topk(k, dim=1).indices
    chosen = cand.gather(1, top[..., None].expand(-1, -1, 2))
    rest = random_points(n, num_points - k, logits.device, generator, extent)
    return torch.cat([chosen, rest], dim=1)


def is_dense(num_points: int, size: tuple[int, int]) -> bool:
    """Take every pixel of a prediction of `size` (h, w) instead of `num_points` sampled points."""
    return num_points >= size[0] * size[1]


def grid_targets(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, H, W) {0, 1} masks -> (n, h*w) float32: the share of each prediction pixel's area that
    the mask covers (the identity when (H, W) == (h, w))."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, size[0] * size[1]), dtype=torch.float32)
    return F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0].flatten(1)


def grid_real(extent: torch.Tensor | None, size: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """(n, 2) real-pixel extents (`real_extent`) -> (n, h*w) bool: the prediction pixels whose centre
    lies on real pixels (the points `random_points` could draw there); None when nothing is padded."""
    if extent is None:
        return None
    h, w = size
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    extent = extent.to(device=device, dtype=torch.float32)
    rows, cols = ys[None, :] < extent[:, 1:2], xs[None, :] < extent[:, 0:1]  # (n, h), (n, w)
    return (rows[:, :, None] & cols[:, None, :]).flatten(1)
