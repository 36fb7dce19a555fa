import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from conftest import DEVICE_PARAMS
from sskd_ray.losses.contrastive import (contrastive_loss, info_nce, margin_hinge, sample_negatives,
                                        sample_uniform_negatives, sampling_embedding)
from sskd_ray.losses.correspondence import strong_to_weak
from sskd_ray.losses.diagnostics import false_negative_rate, instance_margin
from sskd_ray.losses.memory_bank import MemoryBank
from sskd_ray.losses.negative_plan import GatheredSegment, SharedSegment, plan_from_index
from sskd_ray.losses import negative_sampling
from sskd_ray.losses.negative_sampling import plan_negatives
from sskd_ray.losses.timing import SectionTimer

DEVICES = DEVICE_PARAMS  # cpu everywhere; cuda marked `gpu`, skipped with "needs CUDA" without one


def _toy_logits():
    # 1 image, 2 instances (queries), 2 pixels (h=1, w=2), 2 classes + no-object
    mask_logits = torch.tensor([[[[0.0, math.log(3)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    class_logits = torch.tensor([[[math.log(3), 0.0, 7.0], [0.0, 0.0, -5.0]]])  # (1, 2, 3)
    return mask_logits, class_logits


def test_sampling_embedding_by_hand():
    qhat = sampling_embedding(*_toy_logits(), mode="fusion")
    # pixel 0: P_m = [.5, .5]; pbar = .5*[.75, .25] + .5*[.5, .5] = [.625, .375]
    # pixel 1: P_m = [.75, .25]; pbar = .75*[.75, .25] + .25*[.5, .5] = [.6875, .3125]
    q0 = torch.tensor([0.5, 0.5, 0.625, 0.375]) / math.sqrt(0.25 + 0.25 + 0.390625 + 0.140625)
    q1 = torch.tensor([0.75, 0.25, 0.6875, 0.3125]) / math.sqrt(0.5625 + 0.0625 + 0.47265625 + 0.09765625)
    assert qhat.shape == (1, 2, 4)
    assert torch.allclose(qhat[0], torch.stack([q0, q1]), atol=1e-6)
    mask_only = sampling_embedding(*_toy_logits(), mode="mask")
    assert torch.allclose(mask_only[0, 1], torch.tensor([0.75, 0.25]) / math.sqrt(0.625), atol=1e-6)
    class_only = sampling_embedding(*_toy_logits(), mode="class")
    assert torch.allclose(class_only[0, 0], torch.tensor([0.625, 0.375]) / math.sqrt(0.53125), atol=1e-6)
    with pytest.raises(ValueError, match="uniform"):
        sampling_embedding(*_toy_logits(), mode="uniform")


def test_info_nce_equals_direct_log_softmax():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(37, 8, generator=g), dim=1).requires_grad_()
    p = F.normalize(torch.randn(37, 8, generator=g), dim=1).requires_grad_()
    pool = F.normalize(torch.randn(50, 8, generator=g), dim=1).requires_grad_()
    idx = torch.randint(0, 50, (37, 5), generator=g)
    ours = info_nce(a, p, pool, idx, temperature=0.2, chunk=8)  # several chunks, checkpointed
    logits = torch.cat([(a * p).sum(1, keepdim=True), torch.einsum("pd,pkd->pk", a, pool[idx])], 1) / 0.2
    direct = -F.log_softmax(logits, dim=1)[:, 0].mean()
    assert torch.allclose(ours, direct, atol=1e-6)
    grads = torch.autograd.grad(ours, (a, p, pool))
    ref = torch.autograd.grad(direct, (a, p, pool))
    for g1, g2 in zip(grads, ref):
        assert torch.allclose(g1, g2, atol=1e-6)


def test_margin_hinge_by_hand():
    a = torch.tensor([[1.0, 0.0]])
    pool = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # cos(a, p) = 1; negatives: cos 0 -> relu(.2 + 0 - 1) = 0, cos 1 -> relu(.2 + 1 - 1) = .2
    loss = margin_hinge(a, a.clone(), pool, torch.tensor([[0, 1]]), margin=0.2)
    assert loss.item() == pytest.approx(0.1)
    assert info_nce(a[:0], a[:0], pool, torch.zeros(0, 2, dtype=torch.long), 0.1).item() == 0.0


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("path", ["rejection", "exact-dense", "exact-gathered"])
def test_negative_frequencies_match_d_power(power, path, monkeypatch):
    # rejection path; the exact fallback alone, its draws counted per candidate (few candidates) or
    # gathered per row (many: forced here by lowering the bound)
    rounds = 4 if path == "rejection" else 0
    if path == "exact-gathered":
        monkeypatch.setattr(negative_sampling, "DENSE_EXACT_CANDIDATES", 0)
    g = torch.Generator().manual_seed(1)
    qhat = F.normalize(torch.rand(7, 5, generator=g), dim=1)
    qhat[3] = qhat[0]  # a duplicate of anchor 0: d = 0, must never be drawn for anchor 0
    anchors = qhat[[0] * 4000]  # many copies of anchor 0 -> 4000 * K i.i.d. draws
    idx = sample_negatives(anchors, 8, power=power, generator=g, candidates=qhat, rounds=rounds)
    counts = np.bincount(idx.flatten().numpy(), minlength=7)
    d = (1 - qhat @ qhat[0]).clamp(0, 1).double().pow(power).numpy()
    assert counts[0] == 0 and counts[3] == 0
    expected = d / d.sum() * counts.sum()
    nz = expected > 0
    assert chisquare(counts[nz], expected[nz]).pvalue > 1e-3


def test_sampling_never_builds_p_by_p_and_fills_all_slots():
    g = torch.Generator().manual_seed(0)
    qhat = F.normalize(torch.rand(3000, 6, generator=g), dim=1)
    idx = sample_negatives(qhat, 16, generator=g, chunk=256)
    assert idx.shape == (3000, 16) and idx.min() >= 0 and idx.max() < 3000
    same = torch.ones(5, 3)  # every candidate identical: distribution undefined -> uniform, no hang
    assert sample_negatives(F.normalize(same, dim=1), 4, generator=g).shape == (5, 4)


def test_same_instance_pixels_are_rarely_each_others_negatives():
    # a 16x16 map, left half owned by query 0 (class 0), right half by query 1 (class 1)
    mask_logits = torch.full((1, 2, 16, 16), -4.0)
    mask_logits[0, 0, :, :8] = 4.0
    mask_logits[0, 1, :, 8:] = 4.0
    class_logits = torch.tensor([[[4.0, -4.0, -4.0], [-4.0, 4.0, -4.0]]])
    qhat = sampling_embedding(mask_logits, class_logits)[0]  # (256, E)
    ids = torch.zeros(16, 16, dtype=torch.long)
    ids[:, :8], ids[:, 8:] = 1, 2
    ids = ids.flatten()
    idx = sample_negatives(qhat, 32, generator=torch.Generator().manual_seed(0))
    fnr = false_negative_rate(idx, ids)
    uniform = torch.randint(0, 256, idx.shape, generator=torch.Generator().manual_seed(0))
    assert fnr < 0.02 < 0.4 < false_negative_rate(uniform, ids)


def test_diagnostics_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ids = torch.tensor([1, 1, 2, 0])  # the last pixel is background: ignored
    # same pairs (0,1),(1,0): cos 1; different pairs (0,2),(2,0),(1,2),(2,1): cos 0
    assert instance_margin(z, ids) == pytest.approx(1.0)
    neg = torch.tensor([[1, 2], [2, 2], [0, 3], [0, 1]])
    # anchors 0,1 in instance 1: negatives 1 (same), 2, 2, 2; anchor 2 in instance 2: 0, 3 -> 1 of 6
    assert false_negative_rate(neg, ids) == pytest.approx(1 / 6)


def test_strong_to_weak_crop_and_flip():
    strong = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 2, 4, 4).clone()  # value = strong column index
    strong[:, 1] = 1.0  # second channel constant, so normalisation keeps the ratio visible
    box = torch.tensor([[0.5, 0.0, 1.0, 1.0]])  # the strong view is the right half of the weak view
    aligned, valid = strong_to_weak(strong, box, torch.tensor([False]), (4, 8))
    assert valid[0, 0].tolist() == [False] * 4 + [True] * 4
    raw_first_channel = aligned[0, 0] / aligned[0, 1]  # undo the normalisation: ratio = strong column
    assert torch.allclose(raw_first_channel[0, 4:], torch.tensor([0.0, 1.0, 2.0, 3.0]), atol=1e-5)
    aligned, valid = strong_to_weak(strong, box, torch.tensor([True]), (4, 8))
    assert torch.allclose((aligned[0, 0] / aligned[0, 1])[0, 4:], torch.tensor([3.0, 2.0, 1.0, 0.0]), atol=1e-5)


def test_memory_bank_is_fifo():
    bank = MemoryBank(size=5)
    bank.push(torch.arange(3.0)[:, None], torch.ones(3, 2))
    bank.push(torch.arange(3.0, 7.0)[:, None], torch.ones(4, 2))
    assert len(bank) == 5 and bank.embeddings[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="width"):
        bank.push(torch.zeros(1, 1), torch.ones(1, 3))


def _gen(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_shared_proposals_give_each_anchor_its_own_target(device, power):
    # 150 candidates; blocks of 32 anchors share proposals. Anchor row 0 of a block is anchor A,
    # the other rows are anchor B (a different target). Taking one anchor per block gives
    # independent samples of A's K draws, whose frequencies must follow d(A, j)^power.
    g = _gen(device, 2)
    cands = F.normalize(torch.rand(150, 6, generator=torch.Generator().manual_seed(3)), dim=1).to(device)
    cands[7] = cands[0]  # a duplicate of A: d = 0, never drawn for A
    blocks, chunk, k = 800, 32, 8
    anchors = cands[[0] + [5] * (chunk - 1)].repeat(blocks, 1)  # (blocks * 32, E)
    plan = plan_negatives(len(anchors), len(cands), k, anchors, cands, power, generator=g, chunk=chunk)
    shared = [s for b in plan.blocks for s in b.segments if isinstance(s, SharedSegment)]
    # the rejection path ran in every block, with fewer proposals than candidates (an exact group over
    # few candidates is a shared segment over all of them)
    assert sum(len(s.cand) < len(cands) for s in shared) >= blocks
    draws = plan.index()[::chunk].flatten().cpu().numpy()  # anchor A's K draws, one anchor per block
    counts = np.bincount(draws, minlength=150)
    d = (1 - cands @ cands[0]).clamp(0, 1).double().pow(power).cpu().numpy()
    d[d < 1e-5] = 0
    assert counts[0] == 0 and counts[7] == 0
    expected = d / d.sum() * counts.sum()
    assert chisquare(counts[expected > 0], expected[expected > 0]).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_uniform_never_draws_the_anchors_own_pixel(device):
    g = _gen(device, 0)
    rows = torch.arange(500, device=device)
    idx = sample_uniform_negatives(500, 500, 64, g, device, exclude=rows)
    assert idx.device.type == device and idx.shape == (500, 64)
    assert not (idx == rows[:, None]).any() and idx.min() >= 0 and idx.max() < 500
    assert len(torch.unique(idx, dim=0)) == 500  # anchors sharing proposals still get different negatives
    two = sample_uniform_negatives(3, 2, 5, g, device, exclude=torch.tensor([0, 1, 0], device=device))
    assert two.tolist() == [[1] * 5, [0] * 5, [1] * 5]  # two candidates, one excluded: the other, always
    _, plan = contrastive_loss(*[F.normalize(torch.randn(300, 4, device=device), dim=1)] * 3, None, None, 16,
                               exclude=torch.arange(300, device=device), generator=g)
    assert not (plan.index() == torch.arange(300, device=device)[:, None]).any()
    with pytest.raises(ValueError, match="1 candidate"):
        sample_uniform_negatives(2, 1, 4, g, device, exclude=torch.zeros(2, dtype=torch.long, device=device))


def _direct_loss(a, p, pool, idx, form, tau=0.1, margin=0.2):
    neg = torch.einsum("pd,pkd->pk", a, pool[idx])
    pos = (a * p).sum(1, keepdim=True)
    if form == "hinge":
        return F.relu(margin + neg - pos).mean()
    return -F.log_softmax(torch.cat([pos, neg], 1) / tau, dim=1)[:, 0].mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["infonce", "hinge"])
@pytest.mark.parametrize("path", ["rejection", "exact-dense", "exact-gathered"])  # + exact for the few short rows
def test_fused_loss_equals_the_direct_formula_on_its_own_negatives(device, form, path, monkeypatch):
    rounds = 4 if path == "rejection" else 0
    if path == "exact-gathered":
        monkeypatch.setattr(negative_sampling, "DENSE_EXACT_CANDIDATES", 0)
    g = torch.Generator().manual_seed(4)
    qhat = F.normalize(torch.rand(700, 9, generator=g) ** 4, dim=1).to(device)
    qhat[:5] = qhat[0]  # near-duplicates of each other
    qhat[5:40] = F.normalize(torch.ones(9), dim=0).to(device)  # 35 identical pixels: low acceptance for them
    a, p = (F.normalize(torch.randn(300, 8, generator=g), dim=1).to(device).requires_grad_() for _ in range(2))
    pool = F.normalize(torch.randn(700, 8, generator=g), dim=1).to(device).requires_grad_()
    loss, plan = contrastive_loss(a, p, pool, qhat[:300], qhat, 16, temperature=0.1, form=form,
                                  generator=_gen(device, 5), chunk=128, rounds=rounds)
    kinds = {type(seg) for blk in plan.blocks for seg in blk.segments}
    assert kinds == {"rejection": kinds | {SharedSegment}, "exact-dense": {SharedSegment},
                     "exact-gathered": {GatheredSegment}}[path]
    idx = plan.index()
    assert idx.shape == (300, 16) and idx.min() >= 0 and idx.max() < 700
    direct = _direct_loss(a, p, pool, idx, form)
    assert torch.allclose(loss, direct, atol=1e-5)
    for ours, ref in zip(torch.autograd.grad(loss, (a, p, pool)), torch.autograd.grad(direct, (a, p, pool))):
        assert torch.allclose(ours, ref, atol=1e-6)
    public = (info_nce if form == "infonce" else margin_hinge)(a, p, pool, idx, *(() if form == "hinge" else (0.1,)))
    assert torch.allclose(public, direct, atol=1e-5)


def test_info_nce_on_scattered_indices_gathers_and_matches():
    g = torch.Generator().manual_seed(0)
    a, p = (F.normalize(torch.randn(90, 8, generator=g), dim=1).requires_grad_() for _ in range(2))
    pool = F.normalize(torch.randn(5000, 8, generator=g), dim=1).requires_grad_()
    idx = torch.randint(0, 5000, (90, 6), generator=g)
    mixed = torch.cat([idx[:, :3], idx[:, 3:] % 20], 1)  # 3 scattered entries per row, 3 from 20 shared ones
    kinds = [[type(seg) for seg in plan_from_index(index, 5000, chunk=64).blocks[0].segments]
             for index in (idx[:, :1], idx % 20, mixed)]
    assert kinds == [[GatheredSegment], [SharedSegment], [SharedSegment, GatheredSegment]]
    for index in (idx, idx % 20, mixed):  # gathered; shared with repeated columns (counts); both in one block
        ours = info_nce(a, p, pool, index, 0.2, chunk=64)
        direct = _direct_loss(a, p, pool, index, "infonce", tau=0.2)
        assert torch.allclose(ours, direct, atol=1e-6)
        for g1, g2 in zip(torch.autograd.grad(ours, (a, p, pool)), torch.autograd.grad(direct, (a, p, pool))):
            assert torch.allclose(g1, g2, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_is_float32_under_bf16_autocast(device):
    g = torch.Generator().manual_seed(0)
    a, p = (F.normalize(torch.randn(64, 8, generator=g), dim=1).to(device, torch.bfloat16).requires_grad_()
            for _ in range(2))
    qhat = F.normalize(torch.rand(64, 5, generator=g), dim=1).to(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss, plan = contrastive_loss(a, p, p, qhat, qhat, 8, generator=_gen(device, 1))
    assert loss.dtype == torch.float32
    direct = _direct_loss(a.float(), p.float(), p.float(), plan.index(), "infonce")  # the bf16 values, in fp32
    assert torch.allclose(loss, direct, atol=1e-5)
    loss.backward()
    assert a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()


@pytest.mark.parametrize("device", DEVICES)
def test_generator_on_the_data_device_drives_all_draws(device):
    qhat = F.normalize(torch.rand(200, 6, generator=torch.Generator().manual_seed(0)), dim=1).to(device)
    first = sample_negatives(qhat, 12, generator=_gen(device, 7), rounds=1)
    again = sample_negatives(qhat, 12, generator=_gen(device, 7), rounds=1)
    exact = sample_negatives(qhat, 12, generator=_gen(device, 7), rounds=0)  # multinomial on that device
    assert first.device.type == exact.device.type == device
    assert torch.equal(first, again) and not torch.equal(first, sample_negatives(qhat, 12, generator=_gen(device, 8)))
    assert (exact != torch.arange(200, device=device)[:, None]).all()  # d(i, i) = 0: never itself


class _SlowBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, seconds):
        ctx.seconds = seconds
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.seconds)
        return grad, None


@pytest.mark.parametrize("device", DEVICES)
def test_section_timer_counts_its_forward_and_backward_only(device):
    timer = SectionTimer()
    x = torch.ones(3, device=device, requires_grad=True)
    outside = _SlowBackward.apply(x, 0.3).sum()  # another term of the step: not counted
    inner = timer.begin(x)
    time.sleep(0.05)  # the section's forward
    section = timer.end(_SlowBackward.apply(inner, 0.1).sum())
    (outside + section).backward()
    seconds = timer.pop()
    assert 0.15 <= seconds < 0.3  # 0.05 forward + 0.1 backward, without the 0.3 s outside
    assert timer.pop() == 0.0 and torch.equal(x.grad, torch.full((3,), 2.0, device=device))
