"""Weak/strong view correspondence: strong-view embeddings resampled at the weak view's locations.

The strong view is a crop of the weak view, given as a box (x0, y0, x1, y1) in the weak view's
normalised [0, 1] coordinates, resized to the strong view's size and then optionally flipped
horizontally. A weak-view location u maps to s = (u - x0) / (x1 - x0) in the strong view (then
1 - s_x if flipped); only locations with s inside [0, 1]^2 are valid anchors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def strong_to_weak(strong: torch.Tensor, crop_boxes: torch.Tensor, flipped: torch.Tensor,
                   size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """strong (B, D, hs, ws), crop_boxes (B, 4), flipped (B,) bool, size = the weak map's (h, w) ->
    (aligned (B, D, h, w) re-normalised over D, valid (B, h, w) bool)."""
    b = strong.shape[0]
    h, w = size
    ys = (torch.arange(h, device=strong.device, dtype=torch.float32) + 0.5) / h  # pixel centres
    xs = (torch.arange(w, device=strong.device, dtype=torch.float32) + 0.5) / w
    x0, y0, x1, y1 = (crop_boxes[:, i, None].float() for i in range(4))  # (B, 1) each
    sx = (xs[None, :] - x0) / (x1 - x0)  # (B, w)
    sy = (ys[None, :] - y0) / (y1 - y0)  # (B, h)
    sx = torch.where(flipped[:, None].bool(), 1 - sx, sx)
    valid = ((sy >= 0) & (sy <= 1))[:, :, None] & ((sx >= 0) & (sx <= 1))[:, None, :]  # (B, h, w)
    grid = torch.stack([sx[:, None, :].expand(b, h, w), sy[:, :, None].expand(b, h, w)], dim=-1) * 2 - 1
    aligned = F.grid_sample(strong, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(aligned, dim=1), valid
