"""Wall time of one section of a training step, forward *and* backward (e.g. L_con's share of a step).

    emb = timer.begin(embeddings)      # forward clock starts; backward clock stops when emb's gradient is done
    loss = timer.end(some_loss(emb))   # forward clock stops; backward clock starts when loss's gradient arrives
    ...; total.backward(); seconds = timer.pop()

The backward half uses two identity autograd nodes: the one on the section's output runs when the
gradient enters the section, the one on its inputs when the gradient leaves it. PyTorch's engine
runs ready nodes latest-created first, so the nodes between them are the section's own backward.
On CUDA each mark synchronises the device, so the clock sees kernels, not their launches.
"""
from __future__ import annotations

import time

import torch


class _Mark(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, timer: "SectionTimer", role: str) -> torch.Tensor:
        ctx.timer, ctx.role = timer, role
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.timer._backward_mark(ctx.role, grad)
        return grad, None, None


class SectionTimer:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.seconds = 0.0
        self._forward_began: float | None = None
        self._backward_at: float | None = None

    @staticmethod
    def _now(t: torch.Tensor) -> float:
        if t.is_cuda:
            torch.cuda.synchronize(t.device)
        return time.perf_counter()

    def begin(self, x: torch.Tensor) -> torch.Tensor:
        """Mark an input of the section (may be called for several inputs)."""
        if not self.enabled:
            return x
        if self._forward_began is None:
            self._forward_began = self._now(x)
        return _Mark.apply(x, self, "leave") if x.requires_grad else x

    def end(self, y: torch.Tensor) -> torch.Tensor:
        """Mark the section's output."""
        if not self.enabled:
            return y
        if self._forward_began is not None:
            self.seconds += self._now(y) - self._forward_began
            self._forward_began = None
        return _Mark.apply(y, self, "enter") if y.requires_grad else y

    def _backward_mark(self, role: str, grad: torch.Tensor) -> None:
        now = self._now(grad)
        if role == "enter":
            self._backward_at = now
        elif self._backward_at is not None:  # each input's gradient done: count up to the last one
            self.seconds += now - self._backward_at
            self._backward_at = now

    def pop(self) -> float:
        """Seconds spent in the section since the last pop (forward + backward), and reset."""
        seconds, self.seconds, self._backward_at = self.seconds, 0.0, None
        return seconds
