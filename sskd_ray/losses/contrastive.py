"""Instance-aware pixel-wise contrastive loss with debiased negative sampling (docs/method.md, Sec. 3.2).

    P_m = softmax_N(mask_logits)               (N, P)     pbar_c(i) = sum_n P_m(n, i) P_c(n)   (Eq. 1)
    q(i) = [P_m(:, i) ; pbar_c(i)],  qhat = q / |q|                                               (Eq. 2)
    d(i, j) = 1 - <qhat_i, qhat_j>  in [0, 1]   negatives of anchor i drawn with prob ~ d(i, j)^power
    L_con = -mean_i log( exp(s+_i) / (exp(s+_i) + sum_k exp(s-_ik)) ),  s = <z^w, z^s> / tau

Speed and memory: the anchors of a block share their proposals (negative_sampling.py, exact per
anchor), so acceptance is one matmul and the negatives' similarities are another, (block, D) x
(D, S), each anchor weighting the columns it accepted (negative_plan.py). Neither the P x P matrix
nor the (P, K, D) tensor of gathered negatives is built, in forward or backward: memory O(P * K).
The loss is computed in float32 whatever the autocast (as Mask2Former keeps its losses in fp32).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from sskd_ray.losses.negative_plan import NegativePlan, add_rows, plan_from_index
from sskd_ray.losses.negative_sampling import plan_negatives

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


@torch.no_grad()
def sample_negatives(qhat: torch.Tensor, num_negatives: int, power: float = 1.0,
                     generator: torch.Generator | None = None, candidates: torch.Tensor | None = None,
                     chunk: int = 1024, rounds: int = 4) -> torch.Tensor:
    """For each of the P anchors (rows of `qhat`, (P, E)), K indices into the candidates (default:
    the anchors themselves) drawn i.i.d. with probability d(i, j)^power / sum_j d(i, j)^power.

    Exact: uniform proposals, shared by the `chunk` anchors of a block, each accepted by each anchor
    with its own probability ~ d^power (negative_sampling.py argues why this is exact per anchor).
    Anchors still short after `rounds` rounds get exact multinomial draws over all candidates. An
    anchor whose distances are all 0 (every candidate identical to it) falls back to uniform."""
    cands = qhat if candidates is None else candidates
    return plan_negatives(len(qhat), len(cands), num_negatives, qhat, cands, power, None, generator, chunk,
                          rounds).index()


def sample_uniform_negatives(num_anchors: int, num_candidates: int, num_negatives: int,
                             generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The `uniform` ablation: (P, K) indices drawn uniformly (i.i.d. per anchor), no embedding
    needed. exclude (P,): a candidate each anchor never draws (its own pixel, i.e. its positive)."""
    return plan_negatives(num_anchors, num_candidates, num_negatives, exclude=exclude, generator=generator,
                          device=device).index()


class _InfoNCEHead:
    """Per anchor: log(exp(s+) + sum_k exp(s-_k)) - s+ over logits s = cos / tau. State: the running
    logsumexp. Heads see logits (similarities times `scale`) and give gradients w.r.t. logits."""
    needs_score_sum = False

    def __init__(self, temperature: float):
        self.scale = 1.0 / temperature

    def start(self, pos: torch.Tensor) -> torch.Tensor:
        return pos.clone()

    def add(self, state, rows, pos, logits, weight) -> None:
        top = logits.amax(1)  # (n,)
        terms = logits.sub_(top[:, None]).exp_()  # in place: logits are not needed again
        if weight is not None:
            terms.mul_(weight)
        lse = top + terms.sum(1).log()  # -inf for a row with no negatives here: logaddexp keeps the rest
        if rows is None:
            state.copy_(torch.logaddexp(state, lse))
        else:
            state[rows] = torch.logaddexp(state[rows], lse)

    def loss(self, state, pos) -> torch.Tensor:
        return state - pos

    def grad_logits(self, state, pos, logits, weight) -> torch.Tensor:
        g = logits.sub_(state[:, None]).exp_()  # softmax over the anchor's negatives (and positive)
        return g.mul_(weight) if weight is not None else g

    def grad_pos(self, state, pos, logit_sum) -> torch.Tensor:
        return (pos - state).exp() - 1


class _HingeHead:
    """Per anchor: mean_k max(0, m + cos(a, n_k) - cos(a, p)). State: the running sum."""
    needs_score_sum = True
    scale = 1.0

    def __init__(self, margin: float, num_negatives: int):
        self.margin, self.k = margin, num_negatives

    def start(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(pos)

    def add(self, state, rows, pos, logits, weight) -> None:
        h = logits.add_(self.margin).sub_((pos if rows is None else pos[rows])[:, None]).relu_()
        add_rows(state, rows, (h if weight is None else h.mul_(weight)).sum(1) / self.k)

    def loss(self, state, pos) -> torch.Tensor:
        return state

    def grad_logits(self, state, pos, logits, weight) -> torch.Tensor:
        g = (logits + self.margin > pos[:, None]).float().div_(self.k)
        return g.mul_(weight) if weight is not None else g

    def grad_pos(self, state, pos, logit_sum) -> torch.Tensor:
        return -logit_sum


class _PlannedLoss(torch.autograd.Function):
    """Sum over anchors of a head's loss, negatives given by a NegativePlan. Saves only its inputs
    and one number per anchor; backward recomputes each segment's similarities (one matmul)."""

    @staticmethod
    def forward(ctx, anchors, positives, pool, plan: NegativePlan, head):
        states = []
        with torch.autocast(anchors.device.type, enabled=False):
            total = anchors.new_zeros(())
            for blk in plan.blocks:
                za = anchors[blk.start:blk.stop] * head.scale  # logits straight from the matmul
                pos = (za * positives[blk.start:blk.stop]).sum(1)  # (b,)
                state = head.start(pos)
                for seg in blk.segments:
                    logits, weight = seg.scores(za if seg.rows is None else za[seg.rows], pool)  # (n, S)
                    head.add(state, seg.rows, pos, logits, weight)
                total += head.loss(state, pos).sum()
                states.append(state)
        ctx.save_for_backward(anchors, positives, pool, torch.cat(states))
        ctx.plan, ctx.head = plan, head
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        anchors, positives, pool, states = ctx.saved_tensors
        need_a, need_p, need_pool = ctx.needs_input_grad[:3]
        grad_a, grad_p = torch.zeros_like(anchors), torch.zeros_like(positives)
        grad_pool = torch.zeros_like(pool) if need_pool else None
        head = ctx.head
        with torch.autocast(anchors.device.type, enabled=False):
            for blk in ctx.plan.blocks:
                part = slice(blk.start, blk.stop)
                za, zp, state = anchors[part] * head.scale, positives[part], states[part]
                pos = (za * zp).sum(1)
                za_g = za * grad  # dL/dpool = sum of dL/dlogit * za * scale * grad
                logit_sum = torch.zeros_like(pos) if head.needs_score_sum else None
                for seg in blk.segments:
                    take = (lambda t: t) if seg.rows is None else (lambda t: t[seg.rows])
                    logits, weight = seg.scores(take(za), pool)
                    g = head.grad_logits(take(state), take(pos), logits, weight)  # (n, S) dL/dlogits
                    if logit_sum is not None:
                        add_rows(logit_sum, seg.rows, g.sum(1))
                    gz = seg.backprop(g, take(za_g), pool, need_a, grad_pool)
                    if gz is not None:
                        add_rows(grad_a[part], seg.rows, gz)
                gpos = head.grad_pos(state, pos, logit_sum)[:, None] * (grad * head.scale)  # (b, 1) dL/dcos+
                grad_a[part] = grad_a[part] * (grad * head.scale) + gpos * zp
                grad_p[part] = gpos * anchors[part]
        return grad_a if need_a else None, grad_p if need_p else None, grad_pool, None, None


def _planned(anchors, positives, pool, plan: NegativePlan, head) -> torch.Tensor:
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    return _PlannedLoss.apply(anchors.float(), positives.float(), pool.float(), plan, head) / anchors.shape[0]


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, negatives_pool: torch.Tensor, neg_index: torch.Tensor,
             temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Asymmetric NT-Xent: anchors (P, D) from the weak view, positives (P, D) and the negatives
    pool (M, D) from the strong view, neg_index (P, K) into the pool. Mean over anchors (scalar).
    Blocks of `chunk` anchors whose negatives share few pool entries (the samplers' output) are
    scored by one matmul; others by a per-chunk gather."""
    plan = plan_from_index(neg_index, negatives_pool.shape[0], chunk)
    return _planned(anchors, positives, negatives_pool, plan, _InfoNCEHead(temperature))


def margin_hinge(anchors: torch.Tensor, positives: torch.Tensor, negatives_pool: torch.Tensor, neg_index: torch.Tensor,
                 margin: float = 0.2, chunk: int = 1024) -> torch.Tensor:
    """Margin form: mean over anchors and negatives of max(0, m + cos(a, n) - cos(a, p))."""
    plan = plan_from_index(neg_index, negatives_pool.shape[0], chunk)
    return _planned(anchors, positives, negatives_pool, plan, _HingeHead(margin, neg_index.shape[1]))


def contrastive_loss(anchors: torch.Tensor, positives: torch.Tensor, pool: torch.Tensor,
                     qhat_anchor: torch.Tensor | None, qhat_pool: torch.Tensor | None, num_negatives: int, *,
                     temperature: float = 0.1, power: float = 1.0, form: str = "infonce", margin: float = 0.2,
                     exclude: torch.Tensor | None = None, generator: torch.Generator | None = None,
                     chunk: int = 1024, rounds: int = 4) -> tuple[torch.Tensor, NegativePlan]:
    """Sampling and loss in one: the same value as `sample_negatives` (or, with qhat_anchor None,
    `sample_uniform_negatives`) followed by `info_nce` / `margin_hinge`, without the index round
    trip. anchors, positives (P, D); pool (M, D); qhat_anchor (P, E), qhat_pool (M, E); exclude (P,)
    a pool row each anchor never draws (its positive). Returns the loss and the plan
    (`plan.index()` gives the (P, K) negatives, e.g. for the diagnostics)."""
    if form not in ("infonce", "hinge"):
        raise ValueError(f"loss form '{form}' is not infonce or hinge")
    plan = plan_negatives(anchors.shape[0], pool.shape[0], num_negatives, qhat_anchor, qhat_pool, power, exclude,
                          generator, chunk, rounds, device=anchors.device)
    head = _InfoNCEHead(temperature) if form == "infonce" else _HingeHead(margin, num_negatives)
    return _planned(anchors, positives, pool, plan, head), plan
