"""The Grounding-DINO + SAM2 teacher's supervised loss (docs/method.md, "Set-prediction losses"):

    L = L_det(Grounding-DINO) + w_mask * BCE(SAM2 masks) + w_dice * Dice(SAM2 masks)

L_det is Grounding-DINO's own detection loss (its matcher and weights, from its config) on the
predicted boxes and phrase logits; the mask terms compare SAM2's masks, prompted with each target's
ground-truth box, to the target masks, averaged over instances. The weights are the set loss's
(`loss.mask_weight`, `loss.dice_weight`), so a teacher's masks weigh what a student's do.

Computed from one `TeacherPass` (models/teacher.py), the same forward the fused output comes from;
distributed reductions stay with the caller.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sskd_ray.losses.set_loss import dice_loss
from sskd_ray.models.teacher import GroundingSamTeacher, TeacherPass
from sskd_ray.models.teacher_frames import masks_to_boxes, output_frame, square_to_frame, xyxy_to_cxcywh


def teacher_losses(teacher: GroundingSamTeacher, p: TeacherPass, idx: torch.Tensor, targets: list[dict],
                   mask_weight: float = 5.0, dice_weight: float = 5.0) -> dict[str, torch.Tensor]:
    """The loss terms of the images `idx` of the pass `p`, whose targets are `targets`
    ({"labels" (n,), "masks" (n, H, W) bool in the input frame}) -> {"loss_detection", "loss_mask"}."""
    if len(idx) != len(targets):
        raise ValueError(f"a group has {len(idx)} images but {len(targets)} targets")
    device = p.det.logits.device
    boxes = []  # per image: (n, 4) xyxy normalised by its content size
    for b, t in zip(idx.tolist(), targets):
        h, w = p.sizes[b]
        masks = t["masks"].to(device)[:, :h, :w]
        boxes.append(masks_to_boxes(masks) / torch.tensor([w, h, w, h], device=device, dtype=torch.float32))
    return {"loss_detection": detection_loss(teacher, p, idx, targets, boxes),
            "loss_mask": box_prompted_mask_loss(teacher, p, idx, targets, boxes, mask_weight, dice_weight)}


def adaptation_losses(teacher: GroundingSamTeacher, images: torch.Tensor, targets: list[dict],
                      image_sizes: list[tuple[int, int]] | None = None, mask_weight: float = 5.0,
                      dice_weight: float = 5.0) -> dict[str, torch.Tensor]:
    """`teacher_losses` of a whole batch, from its own forward (images (B, 3, H, W) in [0, 1])."""
    idx = torch.arange(images.shape[0], device=images.device)
    return teacher_losses(teacher, teacher.run(images, image_sizes), idx, targets, mask_weight, dice_weight)


def detection_loss(teacher: GroundingSamTeacher, p: TeacherPass, idx: torch.Tensor, targets: list[dict],
                   boxes: list[torch.Tensor]) -> torch.Tensor:
    """Grounding-DINO's loss on the rows of the group's images, one row per (prompt chunk, image); each
    target goes to the row of its class's chunk, labelled by its phrase index there."""
    # transformers' Grounding-DINO module takes seconds to import: only the VFM teacher's stages need it
    from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps, build_text_mask

    k, batch, det = teacher.input_ids.shape[0], len(p.sizes), p.det
    rows, labels = [], []
    for chunk in range(k):
        for b, t, xyxy in zip(idx.tolist(), targets, boxes):
            cls = t["labels"].to(det.logits.device)
            keep = teacher.class_chunk[cls] == chunk
            rows.append(chunk * batch + b)
            labels.append({"class_labels": teacher.class_local[cls[keep]], "boxes": xyxy_to_cxcywh(xyxy[keep])})
    if not rows:
        return det.logits.sum() * 0.0
    rows_t = torch.tensor(rows, device=det.logits.device)
    logits = det.logits[rows_t]
    input_ids = teacher.input_ids.repeat_interleave(batch, 0)[rows_t]
    attention = teacher.attention_mask.repeat_interleave(batch, 0)[rows_t]
    pick = (lambda x: None if x is None else x[rows_t])
    loss, _, _ = teacher.detector.loss_function(
        logits, labels, logits.device, det.pred_boxes[rows_t], teacher.detector.config,
        build_label_maps(logits, input_ids), build_text_mask(logits, attention),
        outputs_class=None, outputs_coord=None, encoder_logits=pick(det.encoder_logits),
        encoder_pred_boxes=pick(det.encoder_pred_boxes))
    return loss


def box_prompted_mask_loss(teacher: GroundingSamTeacher, p: TeacherPass, idx: torch.Tensor, targets: list[dict],
                           boxes: list[torch.Tensor], mask_weight: float, dice_weight: float) -> torch.Tensor:
    """Mean over instances of w_mask * BCE + w_dice * Dice of SAM2's masks for the ground-truth boxes, on
    the content of each image at the masks' output resolution (images have different instance counts:
    one image at a time)."""
    total, count = p.det.logits.new_zeros(()), 0
    s = teacher.segmenter_size
    for b, t, xyxy in zip(idx.tolist(), targets, boxes):
        if len(xyxy) == 0:
            continue
        one = teacher.backend.select(p.embeddings, b)
        logits, _ = teacher.segment_boxes(one, xyxy[None], [p.seg_sizes[b]])  # (1, n, m, m)
        scale, _ = output_frame(p.frame, logits.shape[-1])
        h, w = p.sizes[b]
        out = (max(1, round(h * scale)), max(1, round(w * scale)))
        (sh, sw) = p.seg_sizes[b]
        pred = square_to_frame(logits, [(sh / s, sw / s)], [out], out, 0.0)[0].flatten(1)  # (n, ho*wo)
        gt = F.interpolate(t["masks"][None, :, :h, :w].float().to(pred.device), size=out, mode="bilinear",
                           align_corners=False)[0].flatten(1)
        bce = F.binary_cross_entropy_with_logits(pred, gt, reduction="none").mean(1)
        total = total + (mask_weight * bce + dice_weight * dice_loss(pred, gt)).sum()
        count += len(xyxy)
    return total / max(count, 1)
