"""Mask2Former-style set prediction loss with deep supervision.

    L = w_class * CE(class; no-object weight 0.1) + w_mask * BCE(points) + w_dice * Dice(points)

summed over the final and every auxiliary decoder prediction. Mask terms are computed on points
chosen by uncertainty-based importance sampling, so memory does not grow with image size; they
are summed over matched masks and divided by `num_masks`, which the caller reduces across DDP
ranks (this function does no distributed communication).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sskd_ray.losses.matcher import hungarian_match
from sskd_ray.losses.point_sampling import point_sample, real_extent, uncertain_points
from sskd_ray.models.outputs import SegOutput


def dice_loss(pred_logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(n, P), (n, P) -> (n,) 1 - (2 sum(p g) + 1) / (sum p + sum g + 1)."""
    p = pred_logits.sigmoid()
    return 1 - (2 * (p * gt).sum(-1) + 1) / (p.sum(-1) + gt.sum(-1) + 1)


def single_set_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, targets: list[dict],
                    num_masks: float, *, class_weight: float = 2.0, mask_weight: float = 5.0,
                    dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                    oversample_ratio: float = 3.0, importance_ratio: float = 0.75,
                    pad_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One decoder layer's predictions (B, Q, C+1), (B, Q, h, w) against targets
    [{"labels": (G,), "masks": (G, H, W) bool}]. Returns weighted loss_class, loss_mask, loss_dice.
    `pad_mask` (B, H, W) bool, True on real pixels (padding at the bottom / right): matching points,
    uncertain candidates and the uniform share are all drawn on real pixels only."""
    b, q, c1 = class_logits.shape
    target_classes = torch.full((b, q), c1 - 1, dtype=torch.long, device=class_logits.device)
    pred_masks, gt_masks, extents = [], [], []
    extent = real_extent(pad_mask.to(mask_logits.device)) if pad_mask is not None else None  # (B, 2)
    for i, t in enumerate(targets):
        qi, gi = hungarian_match(class_logits[i], mask_logits[i], t["labels"], t["masks"], num_points,
                                 class_weight, mask_weight, dice_weight,
                                 extent=extent[i] if extent is not None else None)
        target_classes[i, qi] = t["labels"][gi].to(class_logits.device)
        pred_masks.append(mask_logits[i, qi])
        gt_masks.append(t["masks"][gi])
        if extent is not None:
            extents.append(extent[i].expand(len(qi), -1))
    weight = torch.ones(c1, device=class_logits.device)
    weight[-1] = no_object_weight
    loss_class = F.cross_entropy(class_logits.transpose(1, 2).float(), target_classes, weight)
    pred = torch.cat(pred_masks)  # (M, h, w)
    if pred.shape[0] == 0:  # no ground truth anywhere in the batch: nothing to add (and no graph kept)
        zero = class_logits.new_zeros((), dtype=torch.float32)
        return {"loss_class": class_weight * loss_class, "loss_mask": zero, "loss_dice": zero}
    gt = torch.cat([g.to(pred.device) for g in gt_masks]).float()  # (M, H, W)
    with torch.autocast(pred.device.type, enabled=False):  # point losses in fp32, as Mask2Former
        pred = pred.float()
        with torch.no_grad():
            coords = uncertain_points(pred, num_points, oversample_ratio, importance_ratio,
                                      extent=torch.cat(extents) if extent is not None else None)
            gt_points = point_sample(gt, coords)
        pred_points = point_sample(pred, coords)
        loss_mask = F.binary_cross_entropy_with_logits(pred_points, gt_points, reduction="none").mean(1).sum() / num_masks
        loss_dice = dice_loss(pred_points, gt_points).sum() / num_masks
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
    for mask_logits, class_logits in layers:
        for key, value in single_set_loss(class_logits, mask_logits, targets, num_masks, pad_mask=pad_mask,
                                          **weights).items():
            total[key] = total.get(key, 0.0) + value
    total["loss"] = sum(total.values())
    return total
