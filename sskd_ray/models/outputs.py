"""The one output every model returns, teacher or student."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegOutput:
    mask_logits: torch.Tensor  # (B, N, H', W') per-query mask logits
    class_logits: torch.Tensor  # (B, N, C + 1), last column = "no object"
    embeddings: torch.Tensor  # (B, D, h, w) L2-normalised over D
    # earlier decoder layers' (mask_logits, class_logits), for deep supervision; may be empty
    aux: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
