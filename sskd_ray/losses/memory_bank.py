"""FIFO memory bank of past strong-view embeddings (and their sampling embeddings), as an
alternative negative pool to the current mini-batch (the `memory_bank` scope of the ablations)."""
from __future__ import annotations

import torch


class MemoryBank:
    def __init__(self, size: int):
        self.size = size
        self.embeddings: torch.Tensor | None = None  # (n, D)
        self.qhat: torch.Tensor | None = None  # (n, E), aligned with embeddings

    def __len__(self) -> int:
        return 0 if self.embeddings is None else self.embeddings.shape[0]

    @torch.no_grad()
    def push(self, embeddings: torch.Tensor, qhat: torch.Tensor) -> None:
        """Append the newest entries; the oldest drop out once more than `size` are held."""
        embeddings, qhat = embeddings.detach(), qhat.detach()
        if self.embeddings is not None and self.qhat.shape[1] != qhat.shape[1]:
            raise ValueError(f"sampling embedding width changed: {self.qhat.shape[1]} -> {qhat.shape[1]}")
        if self.embeddings is None:
            self.embeddings, self.qhat = embeddings[-self.size:], qhat[-self.size:]
        else:
            self.embeddings = torch.cat([self.embeddings, embeddings])[-self.size:]
            self.qhat = torch.cat([self.qhat, qhat])[-self.size:]
