"""Instance-aware pixel-wise contrastive loss with debiased negative sampling (METHOD.md, Sec. 3.2).

    P_m = softmax_N(mask_logits)               (N, P)     pbar_c(i) = sum_n P_m(n, i) P_c(n)   (Eq. 1)
    q(i) = [P_m(:, i) ; pbar_c(i)],  qhat = q / |q|                                               (Eq. 2)
    d(i, j) = 1 - <qhat_i, qhat_j>  in [0, 1]   negatives of anchor i drawn with prob ~ d(i, j)^power
    L_con = -mean_i log( exp(s+_i) / (exp(s+_i) + sum_k exp(s-_ik)) ),  s = <z^w, z^s> / tau

Memory: sampling never builds the P x P matrix (rejection sampling from uniform proposals, exact;
an exact row-wise multinomial mops up rare anchors with very low acceptance), and the loss never
holds the (P, K, D) tensor of gathered negatives (chunks of anchors, recomputed in backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

SAMPLING_MODES = ("fusion", "mask", "class")


@torch.no_grad()
def sampling_embedding(mask_logits: torch.Tensor, class_logits: torch.Tensor, mode: str = "fusion") -> torch.Tensor:
    """mask_logits (B, N, h, w), class_logits (B, N, C+1) -> qhat (B, h*w, E), L2-normalised.
    E = N + C (fusion), N (mask) or C (class). The no-object column is dropped before the softmax."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode '{mode}' is not one of {SAMPLING_MODES}")
    p_mask = mask_logits.float().flatten(2).softmax(dim=1)  # (B, N, P): which instance owns pixel i
    p_class = class_logits.float()[..., :-1].softmax(dim=-1)  # (B, N, C)
    pbar = torch.einsum("bnp,bnc->bpc", p_mask, p_class)  # (B, P, C)          (Eq. 1)
    parts = {"fusion": [p_mask.transpose(1, 2), pbar], "mask": [p_mask.transpose(1, 2)], "class": [pbar]}[mode]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)  # (Eq. 2)


EPS = 1e-5  # float32 rounding leaves d(i, i) ~ 1e-7, which sqrt(d) would lift to ~3e-4: call it 0


def _weights(d: torch.Tensor, power: float) -> torch.Tensor:
    d = d.clamp_(0, 1).masked_fill_(d < EPS, 0.0)
    return d.pow_(power) if power != 1.0 else d


def _distance(qa: torch.Tensor, qc: torch.Tensor, power: float) -> torch.Tensor:
    """(n, E) anchors with their (n, M, E) candidates -> (n, M) d^power, d = 1 - cos, in [0, 1]."""
    return _weights(1 - torch.einsum("ne,nme->nm", qa, qc), power)


@torch.no_grad()
def sample_negatives(qhat: torch.Tensor, num_negatives: int, power: float = 1.0,
                     generator: torch.Generator | None = None, candidates: torch.Tensor | None = None,
                     chunk: int = 256, rounds: int = 4) -> torch.Tensor:
    """For each of the P anchors (rows of `qhat`, (P, E)), K indices into the candidates (default:
    the anchors themselves) drawn i.i.d. with probability d(i, j)^power / sum_j d(i, j)^power.

    Exact: uniform proposals accepted with probability d^power (<= 1) are draws from the target; the
    first accepted ones in proposal order fill the K slots. Anchors still short after `rounds`
    rounds get exact multinomial draws over all candidates, a few rows at a time. An anchor whose
    distances are all 0 (every candidate identical to it) falls back to uniform. Peak memory is
    O(chunk * K * E + P * K); the P x P matrix is never built.
    """
    cands = qhat if candidates is None else candidates
    p, m, k = qhat.shape[0], cands.shape[0], num_negatives
    device = qhat.device
    out = torch.empty(p, k, dtype=torch.long, device=device)
    for start in range(0, p, chunk):
        rows = torch.arange(start, min(start + chunk, p), device=device)
        filled = torch.zeros(len(rows), dtype=torch.long, device=device)
        for _ in range(rounds):
            todo = (filled < k).nonzero(as_tuple=True)[0]
            if len(todo) == 0:
                break
            proposals = torch.randint(0, m, (len(todo), 2 * k), device=device, generator=generator)
            weight = _distance(qhat[rows[todo]], cands[proposals], power)
            accept = torch.rand(weight.shape, device=device, generator=generator) < weight
            slot = filled[todo, None] + accept.long().cumsum(1) - 1  # where each accepted draw goes
            ok = accept & (slot < k)
            r, c = ok.nonzero(as_tuple=True)
            out[rows[todo[r]], slot[r, c]] = proposals[r, c]
            filled[todo] = (filled[todo] + accept.sum(1)).clamp_max(k)
        short = rows[filled < k]
        if len(short):
            _fill_exact(out, short, filled[filled < k], qhat, cands, k, power, generator)
    return out


def _fill_exact(out: torch.Tensor, rows: torch.Tensor, filled: torch.Tensor, qhat: torch.Tensor,
                cands: torch.Tensor, k: int, power: float, generator: torch.Generator | None, block: int = 64) -> None:
    """Exact multinomial draws for the few anchors rejection sampling left short (O(block * M) memory)."""
    for s in range(0, len(rows), block):
        r, f = rows[s:s + block], filled[s:s + block]
        weight = _weights(1 - qhat[r] @ cands.T, power)  # (block, M)
        flat = weight.sum(1) <= 0
        weight[flat] = 1.0  # all candidates identical to the anchor: the target is undefined, use uniform
        draws = torch.multinomial(weight, k, replacement=True, generator=generator)
        keep = torch.arange(k, device=out.device)[None, :] >= f[:, None]  # only the empty slots
        out[r] = torch.where(keep, draws, out[r])


def sample_uniform_negatives(num_anchors: int, num_candidates: int, num_negatives: int,
                             generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """The `uniform` ablation: (P, K) indices drawn uniformly, no embedding needed."""
    return torch.randint(0, num_candidates, (num_anchors, num_negatives), generator=generator, device=device)


def _negative_scores(anchors: torch.Tensor, pool: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(c, D), (M, D), (c, K) -> (c, K) <anchor, pool[index]>. F.embedding + bmm instead of
    `pool[index]`: its backward accumulates into the pool faster on CPU (seen ~2.5x in a one-off
    timing at P=4096, K=256, D=128 during development; bench/contrastive_memory.py times the whole)."""
    return torch.bmm(F.embedding(index, pool), anchors[:, :, None])[..., 0]


def _infonce_chunk(anchors: torch.Tensor, positives: torch.Tensor, pool: torch.Tensor, index: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    pos = (anchors * positives).sum(-1, keepdim=True) / temperature  # (c, 1)
    neg = _negative_scores(anchors, pool, index) / temperature  # (c, K)
    return (torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos[:, 0]).sum()


def _hinge_chunk(anchors: torch.Tensor, positives: torch.Tensor, pool: torch.Tensor, index: torch.Tensor,
                 margin: float) -> torch.Tensor:
    pos = (anchors * positives).sum(-1, keepdim=True)  # (c, 1)
    neg = _negative_scores(anchors, pool, index)  # (c, K)
    return F.relu(margin + neg - pos).mean(1).sum()


def _chunked(fn, anchors, positives, pool, index, arg, chunk: int) -> torch.Tensor:
    """Sum of `fn` over anchor chunks, each recomputed in backward so (chunk, K, D) is never kept."""
    total = anchors.new_zeros(())
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (anchors, positives, pool))
    for s in range(0, anchors.shape[0], chunk):
        args = (anchors[s:s + chunk], positives[s:s + chunk], pool, index[s:s + chunk], arg)
        total = total + (checkpoint(fn, *args, use_reentrant=False) if needs_grad else fn(*args))
    return total


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, negatives_pool: torch.Tensor, neg_index: torch.Tensor,
             temperature: float, chunk: int = 512) -> torch.Tensor:
    """Asymmetric NT-Xent: anchors (P, D) from the weak view, positives (P, D) and the negatives
    pool (M, D) from the strong view, neg_index (P, K) into the pool. Mean over anchors (scalar)."""
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    return _chunked(_infonce_chunk, anchors, positives, negatives_pool, neg_index, temperature, chunk) / anchors.shape[0]


def margin_hinge(anchors: torch.Tensor, positives: torch.Tensor, negatives_pool: torch.Tensor, neg_index: torch.Tensor,
                 margin: float = 0.2, chunk: int = 512) -> torch.Tensor:
    """Margin form: mean over anchors and negatives of max(0, m + cos(a, n) - cos(a, p))."""
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    return _chunked(_hinge_chunk, anchors, positives, negatives_pool, neg_index, margin, chunk) / anchors.shape[0]

