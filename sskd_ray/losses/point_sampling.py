"""Point sampling so mask losses cost O(points), not O(pixels) (the idea of PointRend / Mask2Former)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """maps (n, H, W), coords (n, P, 2) as (x, y) in [0, 1] -> values (n, P), bilinear."""
    grid = (2 * coords - 1)[:, :, None, :]  # (n, P, 1, 2) in [-1, 1]
    return F.grid_sample(maps[:, None].float(), grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def uncertain_points(logits: torch.Tensor, num_points: int, oversample: float, importance: float,
                     generator: torch.Generator | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(n, H, W) mask logits -> (n, num_points, 2) coords: the `importance` share are the most
    uncertain (|logit| smallest) of `oversample * num_points` random candidates, the rest uniform.
    `valid` (n, h, w) bool at any resolution: candidates outside it (batch padding) are never among
    the uncertain ones while enough real candidates exist."""
    n = logits.shape[0]
    cand = torch.rand(n, int(num_points * oversample), 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits.detach(), cand).abs()  # (n, M)
    if valid is not None:
        real = point_sample(valid.to(logits.device), cand) > 0.5  # (n, M)
        uncertainty = uncertainty.masked_fill(~real, float("-inf"))
    k = int(importance * num_points)
    top = uncertainty.topk(k, dim=1).indices
    chosen = cand.gather(1, top[..., None].expand(-1, -1, 2))
    rest = torch.rand(n, num_points - k, 2, device=logits.device, generator=generator)
    return torch.cat([chosen, rest], dim=1)
