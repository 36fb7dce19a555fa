"""Mask2Former-style set prediction loss with deep supervision.

    L = w_class * CE(class; no-object weight 0.1) + w_mask * BCE(points) + w_dice * Dice(points)

summed over the final and every auxiliary decoder prediction. Mask terms are computed on points
chosen by uncertainty-based importance sampling, so memory does not grow with image size, or on
every pixel of a prediction that has no more pixels than `num_points` (point_sampling.is_dense);
they are summed over matched masks and divided by `num_masks`, which the caller reduces across DDP
ranks (this function does no distributed communication).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sskd_ray.losses.matcher import hungarian_match
from sskd_ray.losses.point_sampling import grid_real, grid_targets, is_dense, point_sample, real_extent, uncertain_points
from sskd_ray.models.outputs import SegOutput


def dice_loss(pred_logits: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(n, P), (n, P) -> (n,) 1 - (2 sum(p g) + 1) / (sum p + sum g + 1); `weight` (n, P) {0, 1}
    keeps the sums to the points it marks."""
    p = pred_logits.sigmoid()
    if weight is not None:
        p, gt = p * weight, gt * weight
    return 1 - (2 * (p * gt).sum(-1) + 1) / (p.sum(-1) + gt.sum(-1) + 1)


def _point_losses(pred: torch.Tensor, gt: torch.Tensor, coords_extent: torch.Tensor | None, num_points: int,
                  oversample_ratio: float, importance_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, h, w) matched logits, (M, H, W) their masks -> per-mask BCE (M,) and Dice (M,) on
    importance-sampled points (Mask2Former), fp32."""
    with torch.no_grad():
        coords = uncertain_points(pred, num_points, oversample_ratio, importance_ratio, extent=coords_extent)
        gt_points = point_sample(gt, coords)
    pred_points = point_sample(pred, coords)
    bce = F.binary_cross_entropy_with_logits(pred_points, gt_points, reduction="none").mean(1)
    return bce, dice_loss(pred_points, gt_points)


def _grid_losses(pred: torch.Tensor, gt_grid: torch.Tensor, real: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, h, w) matched logits, (M, h*w) their area-averaged masks, real (M, h*w) or None -> per-mask
    BCE (M,) averaged over the real pixels and Dice (M,) over them: every pixel once, fp32."""
    logits = pred.flatten(1)
    bce = F.binary_cross_entropy_with_logits(logits, gt_grid, reduction="none")
    if real is None:
        return bce.mean(1), dice_loss(logits, gt_grid)
    weight = real.float()
    return (bce * weight).sum(1) / weight.sum(1).clamp_min(1.0), dice_loss(logits, gt_grid, weight)


def single_set_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, targets: list[dict],
                    num_masks: float, *, class_weight: float = 2.0, mask_weight: float = 5.0,
                    dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                    oversample_ratio: float = 3.0, importance_ratio: float = 0.75,
                    pad_mask: torch.Tensor | None = None,
                    gt_grids: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One decoder layer's predictions (B, Q, C+1), (B, Q, h, w) against targets
    [{"labels": (G,), "masks": (G, H, W) bool}]. Returns weighted loss_class, loss_mask, loss_dice.
    `pad_mask` (B, H, W) bool, True on real pixels (padding at the bottom / right): matching points,
    uncertain candidates and the uniform share are all drawn on real pixels only. `gt_grids`: each
    target's masks on the prediction's grid (`grid_targets`), when the loss is dense (`is_dense`)."""
    b, q, c1 = class_logits.shape
    dense = is_dense(num_points, tuple(mask_logits.shape[-2:]))
    if dense and gt_grids is None:
        gt_grids = [grid_targets(t["masks"].to(mask_logits.device), tuple(mask_logits.shape[-2:])) for t in targets]
    target_classes = torch.full((b, q), c1 - 1, dtype=torch.long, device=class_logits.device)
    pred_masks, gt_masks, extents = [], [], []
    extent = real_extent(pad_mask.to(mask_logits.device)) if pad_mask is not None else None  # (B, 2)
    for i, t in enumerate(targets):
        qi, gi = hungarian_match(class_logits[i], mask_logits[i], t["labels"], t["masks"], num_points,
                                 class_weight, mask_weight, dice_weight,
                                 extent=extent[i] if extent is not None else None,
                                 gt_grid=gt_grids[i] if dense else None)
        target_classes[i, qi] = t["labels"][gi].to(class_logits.device)
        pred_masks.append(mask_logits[i, qi])
        gt_masks.append(gt_grids[i][gi.to(gt_grids[i].device)] if dense else t["masks"][gi])
        if extent is not None:
            extents.append(extent[i].expand(len(qi), -1))
    weight = torch.ones(c1, device=class_logits.device)
    weight[-1] = no_object_weight
    loss_class = F.cross_entropy(class_logits.transpose(1, 2).float(), target_classes, weight)
    pred = torch.cat(pred_masks)  # (M, h, w)
    if pred.shape[0] == 0:  # no ground truth anywhere in the batch: nothing to add (and no graph kept)
        zero = class_logits.new_zeros((), dtype=torch.float32)
        return {"loss_class": class_weight * loss_class, "loss_mask": zero, "loss_dice": zero}
    gt = torch.cat([g.to(pred.device) for g in gt_masks]).float()  # (M, H, W), or (M, h*w) when dense
    mask_extent = torch.cat(extents) if extent is not None else None  # (M, 2)
    with torch.autocast(pred.device.type, enabled=False):  # point losses in fp32, as Mask2Former
        if dense:
            bce, dice = _grid_losses(pred.float(), gt, grid_real(mask_extent, tuple(pred.shape[-2:]), pred.device))
        else:
            bce, dice = _point_losses(pred.float(), gt, mask_extent, num_points, oversample_ratio, importance_ratio)
        loss_mask = bce.sum() / num_masks
        loss_dice = dice.sum() / num_masks
    return {"loss_class": class_weight * loss_class, "loss_mask": mask_weight * loss_mask,
            "loss_dice": dice_weight * loss_dice}


def set_loss(out: SegOutput, targets: list[dict], num_masks: float | None = None, pad_mask: torch.Tensor | None = None,
             **weights) -> dict[str, torch.Tensor]:
    """Final + auxiliary layers. `num_masks` defaults to this batch's instance count (min 1);
    under DDP pass the all-reduced mean over ranks instead. Returns the terms and their sum `loss`."""
    if num_masks is None:
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    total: dict[str, torch.Tensor] = {}
    layers = [(out.mask_logits, out.class_logits)] + list(out.aux)
    size = tuple(out.mask_logits.shape[-2:])  # every layer predicts at the pixel decoder's stride
    gt_grids = None  # dense: the targets on the prediction grid once, shared by every layer
    if is_dense(weights.get("num_points", 12544), size):
        gt_grids = [grid_targets(t["masks"].to(out.mask_logits.device), size) for t in targets]
    for mask_logits, class_logits in layers:
        for key, value in single_set_loss(class_logits, mask_logits, targets, num_masks, pad_mask=pad_mask,
                                          gt_grids=gt_grids, **weights).items():
            total[key] = total.get(key, 0.0) + value
    total["loss"] = sum(total.values())
    return total
