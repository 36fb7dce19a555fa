"""Hungarian matching of queries to (pseudo-)ground-truth instances (scipy's linear_sum_assignment).

cost(q, g) = w_class * (-p_q(c_g)) + w_mask * BCE(q, g) + w_dice * Dice(q, g), with the mask terms
computed on `num_points` uniformly random points shared by all pairs (as in Mask2Former), drawn
on the image's real pixels only when the frame is padded (`extent`), or on every pixel of the
prediction when it has no more pixels than that (`point_sampling.is_dense`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sskd_ray.losses.point_sampling import grid_real, grid_targets, is_dense, point_sample, random_points


def pairwise_bce(pred_logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits, (G, P) targets in [0, 1] -> (Q, G) mean BCE over points."""
    pos = F.binary_cross_entropy_with_logits(pred_logits, torch.ones_like(pred_logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred_logits, torch.zeros_like(pred_logits), reduction="none")
    return (torch.einsum("qp,gp->qg", pos, gt) + torch.einsum("qp,gp->qg", neg, 1 - gt)) / pred_logits.shape[1]


def pairwise_dice(pred_logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(Q, P), (G, P) -> (Q, G) dice loss 1 - (2|p.g| + 1) / (|p| + |g| + 1)."""
    p = pred_logits.sigmoid()
    numerator = 2 * torch.einsum("qp,gp->qg", p, gt)
    return 1 - (numerator + 1) / (p.sum(-1)[:, None] + gt.sum(-1)[None, :] + 1)


@torch.no_grad()
def match_cost(class_logits: torch.Tensor, mask_logits: torch.Tensor, gt_labels: torch.Tensor, gt_masks: torch.Tensor,
               num_points: int = 12544, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
               generator: torch.Generator | None = None, extent: torch.Tensor | None = None,
               gt_grid: torch.Tensor | None = None) -> torch.Tensor:
    """(Q, G) float32 matching cost. Computed in fp32 with autocast off, as Mask2Former does: in bf16
    the BCE / Dice sums over thousands of points round enough to flip the assignment. `extent` (2,):
    the (x, y) share of the frame holding real pixels (padding at the bottom / right); the points
    stay there, so what a query predicts on padding never sways its match. `gt_grid` (G, h*w): the
    ground truth already on the prediction's grid (`grid_targets`), for the dense case."""
    device = mask_logits.device
    size = tuple(mask_logits.shape[-2:])
    with torch.autocast(device.type, enabled=False):
        prob = class_logits.float().softmax(-1)[:, gt_labels.to(device)]  # (Q, G)
        if is_dense(num_points, size):  # every prediction pixel once, the real ones only
            pred = mask_logits.float().flatten(1)  # (Q, h*w)
            gt = gt_grid if gt_grid is not None else grid_targets(gt_masks.to(device), size)  # (G, h*w)
            real = grid_real(extent[None] if extent is not None else None, size, device)
            if real is not None:
                pred, gt = pred[:, real[0]], gt[:, real[0]]
        else:
            coords = random_points(1, num_points, device, generator, extent[None] if extent is not None else None)
            pred = point_sample(mask_logits.float(), coords.expand(mask_logits.shape[0], -1, -1))  # (Q, P)
            gt = point_sample(gt_masks.to(device).float(), coords.expand(gt_masks.shape[0], -1, -1))  # (G, P)
        return class_weight * -prob + mask_weight * pairwise_bce(pred, gt) + dice_weight * pairwise_dice(pred, gt)


@torch.no_grad()
def hungarian_match(class_logits: torch.Tensor, mask_logits: torch.Tensor, gt_labels: torch.Tensor,
                    gt_masks: torch.Tensor, num_points: int = 12544, class_weight: float = 2.0,
                    mask_weight: float = 5.0, dice_weight: float = 5.0,
                    generator: torch.Generator | None = None, extent: torch.Tensor | None = None,
                    gt_grid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: class_logits (Q, C+1), mask_logits (Q, h, w), gt_labels (G,), gt_masks (G, H, W),
    extent (2,) or None, gt_grid (G, h*w) or None (see `match_cost`). Returns (query indices, gt
    indices), each (min(Q, G),), on the logits' device."""
    device = mask_logits.device
    if gt_labels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    cost = match_cost(class_logits, mask_logits, gt_labels, gt_masks, num_points, class_weight, mask_weight,
                      dice_weight, generator, extent, gt_grid)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return (torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(cols, dtype=torch.long, device=device))
