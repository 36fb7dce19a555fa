"""Which negatives each anchor has, stored so that their similarities come from matmuls.

A plan splits the P anchors into blocks of consecutive rows. Within a block, a *shared* segment
lists S candidate columns (indices into the negatives pool) and a (rows, S) weight: how many of a
row's K negatives are that column (bool for the rejection sampler's accepted proposals, counts for
exact multinomial draws). The similarities of a whole segment are one (rows, D) x (D, S) matmul,
and a row's negatives are its weighted columns: no (P, K, D) tensor of gathered negatives exists,
in forward or backward. A *gathered* segment is the fallback for indices that share nothing (any
(P, K) index handed to `info_nce`): it gathers its block's (rows, K, D) negatives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def add_rows(t: torch.Tensor, rows: torch.Tensor | None, value: torch.Tensor) -> None:
    """t[rows] += value, with rows None meaning every row."""
    if rows is None:
        t += value
    else:
        t.index_add_(0, rows, value)


@dataclass
class SharedSegment:
    rows: torch.Tensor | None  # (n,) rows of the block it covers; None: all of them
    cand: torch.Tensor  # (S,) long, indices into the negatives pool
    weight: torch.Tensor  # (n, S) bool or counts: how many of a row's negatives are cand[s]

    def scores(self, za: torch.Tensor, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, D) anchors of this segment -> (n, S) similarities and their weight."""
        return za @ pool[self.cand].T, self.weight

    def backprop(self, grad: torch.Tensor, za: torch.Tensor, pool: torch.Tensor, need_za: bool,
                 grad_pool: torch.Tensor | None) -> torch.Tensor | None:
        """grad (n, S) = dL/dscores -> dL/dza (n, D) (None unless need_za); adds dL/dpool into grad_pool."""
        if grad_pool is not None:
            grad_pool.index_add_(0, self.cand, grad.T @ za)  # (S, D)
        return grad @ pool[self.cand] if need_za else None


@dataclass
class GatheredSegment:
    idx: torch.Tensor  # (n, K') long, indices into the pool
    rows: torch.Tensor | None = None  # (n,) rows of the block it covers; None: all of them
    weight: torch.Tensor | None = None  # (n, K') bool: which of idx count (None: all)

    def scores(self, za: torch.Tensor, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # F.embedding + bmm: the (n, K', D) gather lives only inside this call
        return torch.bmm(F.embedding(self.idx, pool), za[:, :, None])[..., 0], self.weight

    def backprop(self, grad: torch.Tensor, za: torch.Tensor, pool: torch.Tensor, need_za: bool,
                 grad_pool: torch.Tensor | None) -> torch.Tensor | None:
        if grad_pool is not None:
            grad_pool.index_add_(0, self.idx.flatten(), (grad[:, :, None] * za[:, None, :]).flatten(0, 1))
        return torch.bmm(grad[:, None, :], F.embedding(self.idx, pool))[:, 0] if need_za else None


@dataclass
class Block:
    start: int
    stop: int
    segments: list


@dataclass
class NegativePlan:
    blocks: list[Block]
    num_anchors: int
    num_negatives: int
    device: torch.device

    def columns_per_anchor(self) -> float:
        """Mean number of similarity columns computed per anchor (K at best; the cost of sharing)."""
        total = 0
        for blk in self.blocks:
            for seg in blk.segments:
                n = blk.stop - blk.start if seg.rows is None else len(seg.rows)
                total += n * (seg.idx.shape[1] if isinstance(seg, GatheredSegment) else len(seg.cand))
        return total / max(self.num_anchors, 1)

    def index(self) -> torch.Tensor:
        """The plan as a (P, K) long tensor of pool indices (a row's negatives segment by segment,
        columns in order)."""
        out = torch.empty(self.num_anchors, self.num_negatives, dtype=torch.long, device=self.device)
        for blk in self.blocks:
            n = blk.stop - blk.start
            filled = torch.zeros(n, dtype=torch.long, device=self.device)
            for seg in blk.segments:
                rows = torch.arange(n, device=self.device) if seg.rows is None else seg.rows
                r, value = _entries(seg, len(rows))
                counts = torch.bincount(r, minlength=len(rows))
                slot = filled[rows][r] + torch.arange(len(r), device=self.device) - (counts.cumsum(0) - counts)[r]
                out[blk.start + rows[r], slot] = value
                filled[rows] += counts
        return out


def _entries(seg, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, pool index) of each of a segment's negatives, row-major, repeats expanded."""
    if isinstance(seg, GatheredSegment):
        if seg.weight is None:
            return torch.arange(n, device=seg.idx.device).repeat_interleave(seg.idx.shape[1]), seg.idx.flatten()
        r, c = seg.weight.nonzero(as_tuple=True)
        return r, seg.idx[r, c]
    r, c = seg.weight.nonzero(as_tuple=True)  # row-major: columns in order within a row
    if seg.weight.dtype != torch.bool:
        reps = seg.weight[r, c].long()
        r, c = r.repeat_interleave(reps), c.repeat_interleave(reps)
    return r, seg.cand[c]


def _singles(idx: torch.Tensor, single: torch.Tensor) -> list[GatheredSegment]:
    """The entries of a block flagged `single`, gathered, for the rows that have any."""
    rows = single.any(1).nonzero(as_tuple=True)[0]
    if len(rows) == 0:
        return []
    flags = single[rows]  # (n, K)
    width = int(flags.sum(1).max())
    order = torch.argsort((~flags).to(torch.uint8), dim=1, stable=True)[:, :width]  # a row's singles first
    mask = flags.gather(1, order)
    every = len(rows) == len(idx)
    return [GatheredSegment(idx[rows].gather(1, order), None if every else rows, None if bool(mask.all()) else mask)]


def plan_from_index(neg_index: torch.Tensor, pool_size: int, chunk: int = 1024, share_limit: int = 8) -> NegativePlan:
    """A plan for a given (P, K) index. In each block of `chunk` rows, the pool entries that two or
    more negatives use (the samplers' shared proposals) become one shared segment, scored by a
    matmul, if there are at most `share_limit` x K of them; the rest (exact draws, indices that
    share nothing) are gathered."""
    p, k = neg_index.shape
    device = neg_index.device
    blocks = []
    for start in range(0, p, chunk):
        idx = neg_index[start:start + chunk]  # (b, K)
        uses = torch.bincount(idx.flatten(), minlength=pool_size)  # O(pool + b K), no sort
        cand = (uses >= 2).nonzero(as_tuple=True)[0]  # (S,)
        if len(cand) == 0 or len(cand) > share_limit * k:
            blocks.append(Block(start, start + len(idx), [GatheredSegment(idx)]))
            continue
        shared = uses[idx] >= 2  # (b, K)
        column = torch.zeros(pool_size, dtype=torch.long, device=device)
        column[cand] = torch.arange(len(cand), device=device)
        counts = torch.zeros(len(idx), len(cand), dtype=torch.int16, device=device)
        counts.scatter_add_(1, column[idx], shared.to(torch.int16))  # (b, S); singles add 0
        weight = counts.bool() if int(counts.max()) <= 1 else counts.float()
        segments = [SharedSegment(None, cand, weight)] + _singles(idx, ~shared)
        blocks.append(Block(start, start + len(idx), segments))
    return NegativePlan(blocks, p, k, device)
