"""Model outputs -> instances -> COCO result dicts; shared by evaluation, pseudo-labeling and predict.

Instance inference follows Mask2Former's: top-k (query, class) pairs by class probability, masks
binarised at logit 0 after upsampling to the image size, score = class probability x mask quality
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


@torch.no_grad()
def instances_from_output(out: SegOutput, image_sizes: list[tuple[int, int]], score_threshold: float = 0.0,
                          top_k: int = 20) -> list[list[Instance]]:
    """One list of instances per image, highest score first."""
    results = []
    for b, (h, w) in enumerate(image_sizes):
        probs = out.class_logits[b].float().softmax(-1)[:, :-1]  # (N, C)
        num_classes = probs.shape[1]
        scores, flat = probs.flatten().topk(min(top_k, probs.numel()))
        queries, labels = flat // num_classes, flat % num_classes
        logits = F.interpolate(out.mask_logits[b, queries][None].float(), size=(h, w), mode="bilinear",
                               align_corners=False)[0]  # (k, h, w)
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
