"""Debiased negative sampling by rejection from proposals shared across a block of anchors.

Target (docs/method.md Sec. 3.2): for anchor i, K draws i.i.d. with p_i(j) ~ d(i, j)^power over the
candidates j, d(i, j) = 1 - <qhat_i, qhat_j> in [0, 1]; the `uniform` ablation is p_i(j) ~ 1 over
the candidates other than an excluded one (the anchor's own pixel). The P x M matrix of d is
never built.

How. The anchors of a block (`chunk` rows) share S proposals c_1..c_S, drawn uniformly from the
M candidates. Anchor i accepts c_s when u_is < (d(i, c_s) / b_i)^power, with its own uniform u_is
and an envelope b_i >= max_j d(i, j). One (block x E) x (E x S) matmul gives every anchor's
acceptance; the first K accepted proposals of each anchor, in proposal order, are its negatives.

Why each anchor's negatives are i.i.d. from its own target. Fix anchor i. The proposals are i.i.d.
uniform and the u_is are independent of everything, so the pairs (c_s, u_is) are i.i.d. over s:
anchor i sees ordinary rejection-sampling trials, uniform proposal, acceptance proportional to
d(i, j)^power (<= 1 by the envelope). Given the sequence of its accept/reject indicators, its
accepted values are i.i.d. p_i. Every choice the sampler makes (which accepted draws fill the K
slots, how many proposals a round gets, which anchors go to the exact fallback) depends only on
acceptance indicators, on other anchors' trials, or on an independent pilot draw, never on anchor
i's accepted values given its indicators; so its kept values stay i.i.d. p_i, and the exact
fallback (a multinomial over all candidates) adds independent draws from p_i. Sharing proposals
correlates the negatives of *different* anchors of a block (two anchors may draw the same
candidate), never the draws of one anchor; the loss is a sum of per-anchor terms, so its
expectation is unchanged. The uniform ablation accepts each proposal with probability 1/2 (an
exact rejection step with a constant acceptance), so anchors of a block do not all get the
same negatives.

Sizes. A pilot of PILOT proposals (then discarded) estimates each anchor's acceptance; the first
round draws enough proposals for 95 % of the block's anchors, later rounds for the rest; anchors
still short, or with acceptance below 1/16, get exact multinomial draws over all candidates, and
so do all anchors of a block when there are no more candidates than proposals (tiny pools: exact
is then cheaper, and draws of different anchors are independent). Exact draws are inverse-CDF
lookups over each row's running sum of d^power; over a pool of at most DENSE_EXACT_CANDIDATES they
are counted per candidate, so a group of rows is scored by one matmul against the whole pool.

Envelope. b_i is the smaller of two bounds computed in O((P + M) E) (see `_envelope`): a ball
around the candidates' mean, and a coordinate-wise minimum (qhat >= 0). When all pixels look
alike (an untrained model: d small everywhere), b_i is small too, and acceptance stays high where
the plain bound d <= 1 would accept almost nothing.
"""
from __future__ import annotations

import math

import torch

from sskd_ray.losses.negative_plan import Block, GatheredSegment, NegativePlan, SharedSegment

EPS = 1e-5  # float32 rounding leaves d(i, i) ~ 1e-7, which sqrt(d) would lift to ~3e-4: call it 0
UNIFORM_ACCEPT = 0.5  # the uniform ablation's acceptance (decorrelates the anchors of a block)
PILOT = 64  # proposals per block to estimate each anchor's acceptance (sizes the rounds)
MAX_PROPOSALS_PER_NEGATIVE = 16  # a round draws at most 16 K proposals; rarer anchors go exact
EXACT_ROWS = 64  # rows per exact group over many candidates: O(64 M) memory
DENSE_EXACT_CANDIDATES = 16384  # up to this many candidates, exact draws are scored as one shared segment
DENSE_EXACT_ENTRIES = 4 * 1024 * 1024  # rows x candidates per dense exact group (16 MB of float32)


def _rng_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def random_uniform(shape: tuple, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0, 1) drawn on the generator's device (the data's when none), returned on `device`."""
    return torch.rand(shape, generator=generator, device=_rng_device(generator, device)).to(device)


def random_index(high: int, shape: tuple, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=generator, device=_rng_device(generator, device)).to(device)


def distance_weights(d: torch.Tensor, power: float) -> torch.Tensor:
    """d -> d^power in place, d clamped to [0, 1] and d < EPS set to 0."""
    d = d.clamp_(0, 1).masked_fill_(d < EPS, 0.0)
    return d.pow_(power) if power != 1.0 else d


def _envelope(qhat: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """(P,) b_i >= max_j d(i, j), the smaller of two O((P + M) E) bounds (plus slack for rounding):
    - ball: with c the candidates' mean, R = max_j |q_j - c|, r_i = |q_i - c|, |q_i - q_j| <= r_i + R and
      d(i, j) = 1 - (|q_i|^2 + |q_j|^2 - |q_i - q_j|^2) / 2 <= 1 - (|q_i|^2 + min_j |q_j|^2) / 2 + (r_i + R)^2 / 2
      (tight when the candidates look alike, as under an untrained model);
    - coordinates: for q >= 0, <q_i, q_j> >= <q_i, m> with m = min_j q_j per coordinate."""
    centre = cands.mean(0)
    reach = (cands - centre).norm(dim=1).max()
    ball = 1 - (qhat.square().sum(1) + cands.square().sum(1).min()) / 2 + ((qhat - centre).norm(dim=1) + reach) ** 2 / 2
    bound = ball if qhat.min() < 0 or cands.min() < 0 else torch.minimum(ball, 1 - qhat @ cands.amin(0))
    return (bound + 1e-5).clamp_(max=1.0)


def _pilot(qa: torch.Tensor, env: torch.Tensor, cands: torch.Tensor, power: float,
           generator: torch.Generator | None) -> torch.Tensor:
    """(b,) each anchor's expected acceptance, from PILOT proposals that are then thrown away."""
    probe = cands[random_index(len(cands), (PILOT,), generator, qa.device)]  # (PILOT, E)
    d = (1 - qa @ probe.T).clamp_(0, 1)  # (b, PILOT)
    rate = (d / env[:, None].clamp_min(EPS)).clamp_(max=1.0).masked_fill_(d < EPS, 0.0)
    return (rate.pow_(power) if power != 1.0 else rate).mean(1)


def _draw_round(qa: torch.Tensor | None, env: torch.Tensor | None, cands: torch.Tensor | None, num_cands: int,
                need: torch.Tensor, size: int, power: float, exclude: torch.Tensor | None,
                generator: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """One round for n anchors: S = `size` shared proposals -> (S,) proposals and the (n, S) bool
    of the accepted ones each anchor keeps (at most its `need`, the first in proposal order)."""
    proposals = random_index(num_cands, (size,), generator, device)
    u = random_uniform((len(need), size), generator, device)  # (n, S): each anchor's own coins
    if qa is None:
        accept = u < UNIFORM_ACCEPT
    else:
        # accept iff d > b_i u^(1/power) and d >= EPS, i.e. iff <qa, qc> < 1 - b_i u^(1/power) <= 1 - EPS
        if power != 1.0:
            u.pow_(1.0 / power)
        threshold = u.mul_(-env[:, None]).add_(1.0).clamp_max_(1.0 - EPS)
        accept = torch.lt(qa @ cands[proposals].T, threshold)  # (n, S)
    if exclude is not None:
        accept &= proposals[None, :] != exclude[:, None]
    count = accept.float().cumsum_(1)  # accepted so far, per row
    return proposals, accept.logical_and_(count <= need[:, None])


def _inverse_cdf_draws(weight: torch.Tensor, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n, M) non-negative weights, each row with a positive sum -> (n, count) column indices drawn
    i.i.d. with probability weight / row sum: the first column whose running sum exceeds a uniform
    draw over [0, row sum). A zero-weight column is never drawn (its running sum does not grow)."""
    cdf = weight.cumsum(1)  # (n, M)
    u = random_uniform((weight.shape[0], count), generator, weight.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=weight.shape[1] - 1)


def _exact_segments(qa: torch.Tensor | None, rows: torch.Tensor, need: torch.Tensor, cands: torch.Tensor | None,
                    num_cands: int, power: float, exclude: torch.Tensor | None,
                    generator: torch.Generator | None) -> list:
    """Exact i.i.d. draws over all candidates for the anchors rejection left short, a group of rows at
    a time. Few candidates (at most DENSE_EXACT_CANDIDATES): the draws are counted per candidate and
    the group's negatives are one shared segment over every candidate, scored by one matmul. Many:
    each row's draws are gathered (they share little with other rows')."""
    out = []
    device = rows.device
    dense = num_cands <= DENSE_EXACT_CANDIDATES
    group = max(EXACT_ROWS, DENSE_EXACT_ENTRIES // num_cands) if dense else EXACT_ROWS
    for s in range(0, len(rows), group):
        r, n_need = rows[s:s + group], need[rows[s:s + group]]
        weight = (torch.ones(len(r), num_cands, device=device) if qa is None
                  else distance_weights(1 - qa[r] @ cands.T, power))  # (n, M)
        if exclude is not None:
            weight[torch.arange(len(r), device=device), exclude[r]] = 0.0
        weight[weight.sum(1) <= 0] = 1.0  # every candidate identical to the anchor: undefined, use uniform
        top = int(n_need.max())
        draws = _inverse_cdf_draws(weight, top, generator)  # (n, top)
        valid = torch.arange(top, device=device)[None, :] < n_need[:, None]
        if dense:
            counts = torch.zeros(len(r), num_cands, device=device)
            counts.scatter_add_(1, draws, valid.float())  # (n, M): how many of a row's negatives each candidate is
            out.append(SharedSegment(r, torch.arange(num_cands, device=device), counts))
        else:
            out.append(GatheredSegment(draws, r, None if bool(valid.all()) else valid))
    return out


def _round_size(need: torch.Tensor, rate: torch.Tensor, k: int, first: bool) -> int:
    """Proposals for a round: enough for 95 % of the anchors in the first (the rest get another
    round), for all of them later; 15 % slack over the expected need."""
    expected = need.float() / rate.clamp_min(1e-6)
    q = torch.quantile(expected, 0.95) if first else expected.max()
    return int(min(max(math.ceil(1.15 * float(q)), 8), MAX_PROPOSALS_PER_NEGATIVE * k))


def _plan_block(qa, env, cands, num_cands, k, power, exclude, generator, rounds, n, device) -> list:
    """Segments for one block of n anchors (qa None: uniform)."""
    need = torch.full((n,), k, dtype=torch.long, device=device)
    if qa is None:
        rate = torch.full((n,), UNIFORM_ACCEPT, device=device)
    else:
        rate = _pilot(qa, env, cands, power, generator)
    todo = (rate * MAX_PROPOSALS_PER_NEGATIVE >= 1).nonzero(as_tuple=True)[0]  # the rest go exact
    if len(todo) and _round_size(need[todo], rate[todo], k, first=True) >= num_cands:
        todo = todo[:0]  # no fewer candidates than proposals: exact draws over all of them cost less
    segments = []
    for r in range(rounds):
        if len(todo) == 0:
            break
        size = _round_size(need[todo], rate[todo], k, first=r == 0)
        every = len(todo) == n
        sub = (lambda t: t) if every else (lambda t: None if t is None else t[todo])
        proposals, keep = _draw_round(sub(qa), sub(env), cands, num_cands, need[todo], size, power, sub(exclude),
                                      generator, device)
        segments.append(SharedSegment(None if every else todo, proposals, keep))
        need[todo] -= keep.sum(1)
        todo = todo[need[todo] > 0]
    short = (need > 0).nonzero(as_tuple=True)[0]
    if len(short):
        segments += _exact_segments(qa, short, need, cands, num_cands, power, exclude, generator)
    return segments


@torch.no_grad()
def plan_negatives(num_anchors: int, num_candidates: int, num_negatives: int, qhat: torch.Tensor | None = None,
                   candidates: torch.Tensor | None = None, power: float = 1.0, exclude: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, chunk: int = 1024, rounds: int = 4,
                   device: torch.device | str | None = None) -> NegativePlan:
    """K negatives for each of P anchors as a NegativePlan (see the module docstring).

    qhat (P, E) anchors' and candidates (M, E) candidates' sampling embeddings (default: the
    anchors themselves); qhat None samples uniformly among `num_candidates`. exclude (P,): a
    candidate each anchor never draws (its own pixel; for the uniform sampler). Memory
    O(chunk * 16 K + P * S) bytes for the kept proposals (S ~ K / acceptance), never P x M."""
    if qhat is not None:
        candidates = qhat if candidates is None else candidates
        num_candidates, device = len(candidates), qhat.device
    device = torch.device(device if device is not None else (exclude.device if exclude is not None else "cpu"))
    if num_candidates < 1 or (exclude is not None and num_candidates < 2):
        raise ValueError(f"cannot draw negatives from {num_candidates} candidate(s)")
    env = _envelope(qhat, candidates) if qhat is not None else None
    blocks = []
    for start in range(0, num_anchors, chunk):
        stop = min(start + chunk, num_anchors)
        part = (lambda t: None if t is None else t[start:stop])
        segs = _plan_block(part(qhat), part(env), candidates, num_candidates, num_negatives, power, part(exclude),
                           generator, rounds, stop - start, device)
        blocks.append(Block(start, stop, segs))
    return NegativePlan(blocks, num_anchors, num_negatives, device)
