"""Model outputs -> instances -> COCO result dicts; shared by evaluation, pseudo-labeling and predict.

Two selections from the same outputs, because they answer different questions:

- `instances_from_output` (COCO evaluation): Mask2Former's inference for AP, top-k (query, class)
  pairs by class probability, so one query may appear under several classes. AP is computed per
  class over a score ranking: a query's second-best class is an extra chance to find an object whose
  best class is wrong, and a low-scored wrong guess ranks below that class's confident hits, so it
  costs little. Mask2Former reports AP this way, without NMS; our val AP stays comparable to it.
- `select_instances` (pseudo-labels, predictions shown to users): a final set of instances that a
  student trains on as ground truth, where every duplicate is a false target. One class per query
  (the argmax over the real classes), the paper's threshold on the fused score, then class-agnostic
  mask NMS so one object is not emitted twice (under two classes, or by two queries).

Both binarise masks at logit 0 after resampling to the image's original size (only the part of the
logit map that covers the image's content when it was padded into a batch), and score an instance
as class probability x mask quality (mean foreground probability inside the binary mask; the paper's
"box score x mask quality", docs/method.md "Models").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sskd_ray.data.coco import encode_rle, mask_to_bbox
from sskd_ray.models.outputs import SegOutput


@dataclass
class Instance:
    label: int  # contiguous class index 0..C-1
    score: float
    mask: np.ndarray  # (H, W) bool at the image's original size


def content_logits(logits: torch.Tensor, content: tuple[int, int], frame: tuple[int, int],
                   size: tuple[int, int]) -> torch.Tensor:
    """(k, h', w') logits covering a padded input frame (Hp, Wp) -> (k, H, W): the part covering the
    image's content (its top-left h x w of the frame) resampled bilinearly to the original (H, W).

    The content spans the fraction h / Hp, w / Wp of the logit map, which need not be a whole number
    of logit pixels, so it is sampled with `grid_sample` at each output pixel's centre; with no
    padding this equals `F.interpolate(..., align_corners=False)`."""
    (h, w), (hp, wp), (out_h, out_w) = content, frame, size
    ys = (torch.arange(out_h, device=logits.device, dtype=torch.float32) + 0.5) / out_h * (h / hp)  # frame fraction
    xs = (torch.arange(out_w, device=logits.device, dtype=torch.float32) + 0.5) / out_w * (w / wp)
    grid = torch.stack([xs[None, :].expand(out_h, out_w), ys[:, None].expand(out_h, out_w)], dim=-1) * 2 - 1
    grid = grid[None].expand(logits.shape[0], -1, -1, -1)  # (k, H, W, 2)
    return F.grid_sample(logits[:, None].float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0]


def _frame_geometry(b: int, image_sizes: list[tuple[int, int]] | None, input_size: tuple[int, int] | None
                    ) -> tuple[tuple[int, int], tuple[int, int]]:
    """(content size, padded frame size) of image `b`; without `image_sizes` the image filled the frame."""
    if image_sizes is None:
        return (1, 1), (1, 1)  # fractions of the frame: the whole of it
    frame = input_size or (max(s[0] for s in image_sizes), max(s[1] for s in image_sizes))
    return image_sizes[b], frame


def _masks_and_quality(mask_logits: torch.Tensor, content: tuple[int, int], frame: tuple[int, int],
                       size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, h', w') logits -> binary masks (k, H, W) at the original size and their quality (k,): the
    mean foreground probability inside each mask (0 for an empty mask)."""
    logits = content_logits(mask_logits, content, frame, size)  # (k, H, W)
    binary = logits > 0
    quality = (logits.sigmoid() * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp_min(1)
    return binary, quality


@torch.no_grad()
def instances_from_output(out: SegOutput, original_sizes: list[tuple[int, int]], score_threshold: float = 0.0,
                          top_k: int = 20, image_sizes: list[tuple[int, int]] | None = None,
                          input_size: tuple[int, int] | None = None) -> list[list[Instance]]:
    """COCO-evaluation inference (see the module doc): one list of instances per image from the top-k
    (query, class) pairs, highest score first, masks at `original_sizes`.

    `image_sizes` are the content sizes inside the padded input frame `input_size` (Hp, Wp) that the
    model saw (`sskd_ray.data.resize.pad_batch`); None: each image filled the whole frame."""
    results = []
    for b, (h, w) in enumerate(original_sizes):
        probs = out.class_logits[b].float().softmax(-1)[:, :-1]  # (N, C)
        num_classes = probs.shape[1]
        scores, flat = probs.flatten().topk(min(top_k, probs.numel()))
        queries, labels = flat // num_classes, flat % num_classes
        content, frame = _frame_geometry(b, image_sizes, input_size)
        binary, quality = _masks_and_quality(out.mask_logits[b, queries], content, frame, (int(h), int(w)))
        final = scores * quality
        keep = [i for i in final.argsort(descending=True).tolist()
                if binary[i].any() and final[i] >= score_threshold]
        results.append([Instance(int(labels[i]), float(final[i]), binary[i].cpu().numpy()) for i in keep])
    return results


def mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """(k, H, W) bool -> (k, k) pairwise IoU, in one matrix product (intersections = M M^T); 0 where
    both masks are empty. fp32 counts are exact up to 2^24 pixels per mask."""
    flat = masks.flatten(1).float()  # (k, HW)
    inter = flat @ flat.T  # (k, k)
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return inter / union.clamp_min(1)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy class-agnostic mask NMS -> (k,) bool keep, for (k, H, W) bool masks and (k,) scores.

    Classic greedy NMS with mask IoU in place of box IoU (the mask NMS of SOLO, Wang et al., ECCV
    2020): walking from the highest score down, a mask is dropped when its IoU with a kept,
    higher-scoring mask is >= `iou_threshold`. Chosen over SOLOv2's Matrix NMS, which decays
    scores instead of dropping masks: a decayed duplicate can still clear the score threshold, and
    pseudo-labels need a hard guarantee that one object is one target; the few candidates left after
    the threshold make the sequential walk cheap. Exact greedy, not YOLACT's Fast NMS (where a
    suppressed mask still suppresses others): k steps over rows of the IoU matrix, on the device
    (no host sync), each step one vectorised row update."""
    k = scores.shape[0]
    order = scores.argsort(descending=True)
    over = mask_iou(masks[order]) >= iou_threshold  # (k, k), in score order
    later = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)  # j after i
    suppress = over & later
    keep = torch.ones(k, dtype=torch.bool, device=scores.device)
    for i in range(k):
        keep = keep & ~(suppress[i] & keep[i])  # a dropped row suppresses nothing
    out = torch.zeros_like(keep)
    out[order] = keep
    return out


@torch.no_grad()
def select_instances(out: SegOutput, original_sizes: list[tuple[int, int]], score_threshold: float = 0.3,
                     nms_iou: float = 0.5, max_instances: int = 20, image_sizes: list[tuple[int, int]] | None = None,
                     input_size: tuple[int, int] | None = None) -> list[list[Instance]]:
    """Pseudo-label selection (see the module doc): per image, each query's best real class; fused
    score = class probability x mask quality >= `score_threshold`; non-empty masks; class-agnostic
    mask NMS at `nms_iou` (`mask_nms`); at most `max_instances`, highest score first.

    Arguments as `instances_from_output`. Queries whose class probability is below the threshold are
    dropped before their masks are resampled: the quality is at most 1, so they cannot pass."""
    results = []
    for b, (h, w) in enumerate(original_sizes):
        probs, labels = out.class_logits[b].float().softmax(-1)[:, :-1].max(-1)  # (N,), (N,)
        queries = (probs >= score_threshold).nonzero()[:, 0]
        content, frame = _frame_geometry(b, image_sizes, input_size)
        binary, quality = _masks_and_quality(out.mask_logits[b, queries], content, frame, (int(h), int(w)))
        scores = probs[queries] * quality
        ok = (scores >= score_threshold) & binary.flatten(1).any(1)
        binary, scores, labels = binary[ok], scores[ok], labels[queries][ok]
        keep = mask_nms(binary, scores, nms_iou)
        binary, scores, labels = binary[keep], scores[keep], labels[keep]
        order = scores.argsort(descending=True)[:max_instances]
        masks = binary[order].cpu().numpy()
        results.append([Instance(int(c), float(s), m)
                        for c, s, m in zip(labels[order].tolist(), scores[order].tolist(), masks)])
    return results


def instances_to_coco(instances: list[Instance], image_id: int, category_ids: list[int]) -> list[dict]:
    return [{"image_id": int(image_id), "category_id": int(category_ids[inst.label]),
             "segmentation": encode_rle(inst.mask), "bbox": mask_to_bbox(inst.mask), "score": round(inst.score, 6)}
            for inst in instances]
