"""Diagnostics of the contrastive loss on images with ground truth (docs/method.md, Sec. 4.3).

Instance ids are given at feature resolution, unique across the batch, 0 = background; anchors
on background are left out of both measures (they belong to no instance).
"""
from __future__ import annotations

import torch


@torch.no_grad()
def false_negative_rate(neg_index: torch.Tensor, anchor_ids: torch.Tensor, candidate_ids: torch.Tensor | None = None) -> float:
    """Share of sampled negatives (P, K) that lie in the same instance as their anchor."""
    candidate_ids = anchor_ids if candidate_ids is None else candidate_ids
    inside = anchor_ids > 0
    if not inside.any():
        return 0.0
    same = candidate_ids[neg_index[inside]] == anchor_ids[inside, None]
    return float(same.float().mean())


@torch.no_grad()
def instance_margin(embeddings: torch.Tensor, instance_ids: torch.Tensor) -> float:
    """Mean cosine similarity of same-instance pixel pairs minus that of different-instance pairs,
    over all ordered pairs i != j of instance pixels, computed exactly from per-instance sums
    (O(P * D), no pair matrix). embeddings (P, D) unit-norm; instance_ids (P,)."""
    keep = instance_ids > 0
    z, ids = embeddings[keep].float(), instance_ids[keep]
    if ids.numel() < 2:
        return 0.0
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), z.shape[1], device=z.device).index_add_(0, inverse, z)  # (I, D)
    self_sim = (z * z).sum()
    same_sum = (sums * sums).sum() - self_sim
    same_pairs = (counts * (counts - 1)).sum()
    total = sums.sum(0)
    diff_sum = total @ total - (sums * sums).sum()
    diff_pairs = ids.numel() ** 2 - (counts ** 2).sum()
    if same_pairs == 0 or diff_pairs == 0:
        return 0.0
    return float(same_sum / same_pairs - diff_sum / diff_pairs)
