"""Model outputs -> instances -> COCO result dicts; shared by evaluation, pseudo-labeling and predict.

Instance inference follows Mask2Former's: top-k (query, class) pairs by class probability, masks
binarised at logit 0 after resampling to the image's original size (only the part of the logit
map that covers the image's content when it was padded into a batch), score = class probability x mask quality
(mean foreground probability inside the binary mask).
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


@torch.no_grad()
def instances_from_output(out: SegOutput, original_sizes: list[tuple[int, int]], score_threshold: float = 0.0,
                          top_k: int = 20, image_sizes: list[tuple[int, int]] | None = None,
                          input_size: tuple[int, int] | None = None) -> list[list[Instance]]:
    """One list of instances per image, highest score first, masks at `original_sizes`.

    `image_sizes` are the content sizes inside the padded input frame `input_size` (Hp, Wp) that the
    model saw (`sskd_ray.data.resize.pad_batch`); None: each image filled the whole frame."""
    results = []
    for b, (h, w) in enumerate(original_sizes):
        probs = out.class_logits[b].float().softmax(-1)[:, :-1]  # (N, C)
        num_classes = probs.shape[1]
        scores, flat = probs.flatten().topk(min(top_k, probs.numel()))
        queries, labels = flat // num_classes, flat % num_classes
        content, frame = (1, 1), (1, 1)  # fractions of the frame: the whole of it
        if image_sizes is not None:
            content = image_sizes[b]
            frame = input_size or (max(s[0] for s in image_sizes), max(s[1] for s in image_sizes))
        logits = content_logits(out.mask_logits[b, queries], content, frame, (int(h), int(w)))  # (k, h, w)
        binary = logits > 0
        quality = (logits.sigmoid() * binary).flatten(1).sum(1) / binary.flatten(1).sum(1).clamp_min(1)
        final = scores * quality
        keep = [i for i in final.argsort(descending=True).tolist()
                if binary[i].any() and final[i] >= score_threshold]
        results.append([Instance(int(labels[i]), float(final[i]), binary[i].cpu().numpy()) for i in keep])
    return results


def instances_to_coco(instances: list[Instance], image_id: int, category_ids: list[int]) -> list[dict]:
    return [{"image_id": int(image_id), "category_id": int(category_ids[inst.label]),
             "segmentation": encode_rle(inst.mask), "bbox": mask_to_bbox(inst.mask), "score": round(inst.score, 6)}
            for inst in instances]
