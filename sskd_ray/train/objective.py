"""The unified objective (docs/method.md Eq. 3), one module for every stage:

    L = L_sup(labeled) + alpha * L_pl(pseudo-labeled) + lambda * L_con(weak vs strong, all images)

It is an `nn.Module` whose forward computes the losses, so Ray Train's DDP wrapper sees one
forward per step whatever the model (the Grounding-DINO + SAM2 teacher's supervised term is
losses/teacher_adaptation.py, from the same forward, not the set loss). A stage switches terms off
through its config.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from sskd_ray.config import LossConfig
from sskd_ray.losses.contrastive import contrastive_loss, sampling_embedding
from sskd_ray.losses.correspondence import strong_to_weak
from sskd_ray.losses.diagnostics import false_negative_rate, instance_margin
from sskd_ray.losses.memory_bank import MemoryBank
from sskd_ray.losses.point_sampling import real_sizes
from sskd_ray.losses.set_loss import set_loss
from sskd_ray.losses.teacher_adaptation import teacher_losses
from sskd_ray.losses.timing import SectionTimer
from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.teacher import GroundingSamTeacher


def select(out: SegOutput, index: torch.Tensor) -> SegOutput:
    """The outputs of the images in `index` (a batch subset)."""
    return SegOutput(out.mask_logits[index], out.class_logits[index], out.embeddings[index],
                     [(m[index], c[index]) for m, c in out.aux])


def instance_ids(targets: list[dict], size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) long on the masks' device: 0 background, else an id unique across the batch (later
    instances on top)."""
    device = targets[0]["masks"].device if targets else torch.device("cpu")
    out = torch.zeros(len(targets), *size, dtype=torch.long, device=device)
    next_id = 1
    for b, t in enumerate(targets):
        if len(t["masks"]) == 0:
            continue
        small = F.interpolate(t["masks"][:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        for m in small:
            out[b][m] = next_id
            next_id += 1
    return out


def content_sizes(pad_mask: torch.Tensor) -> list[tuple[int, int]]:
    """(B, H, W) bool, real pixels at the top-left (views pad at the bottom / right) -> [(h, w)]."""
    return [(int(h), int(w)) for h, w in real_sizes(pad_mask).tolist()]


class Objective(nn.Module):
    def __init__(self, model: nn.Module, loss: LossConfig, use_pseudo_labels: bool, use_contrastive: bool):
        super().__init__()
        self.model = model
        self.cfg = loss
        self.use_pseudo_labels, self.use_contrastive = use_pseudo_labels, use_contrastive
        self.weights = dict(class_weight=loss.class_weight, mask_weight=loss.mask_weight, dice_weight=loss.dice_weight,
                            no_object_weight=loss.no_object_weight, num_points=loss.num_points,
                            oversample_ratio=loss.oversample_ratio, importance_ratio=loss.importance_ratio)
        self.bank = MemoryBank(loss.memory_bank_size) if loss.negative_scope == "memory_bank" else None
        self.contrastive_timer = SectionTimer()  # L_con's time, its backward included (the loop logs the share)

    def _graph_zero(self) -> torch.Tensor:
        """A 0 joined to the graph through one scalar of one trainable parameter, for a step in which no
        term has a graph (backward() and DDP's reducer still run). It holds no activation: unlike
        `0 * outputs.sum()`, it keeps nothing of the forward alive. Parameters no term reaches get no
        gradient; DDP's find_unused_parameters (loop.py) marks them ready."""
        p = next(p for p in self.model.parameters() if p.requires_grad)
        return p.reshape(-1)[0] * 0.0

    def forward(self, weak: torch.Tensor, strong: torch.Tensor, crop_boxes: torch.Tensor, strong_flipped: torch.Tensor,
                targets: list[dict], labeled: torch.Tensor, num_masks: tuple[float, float],
                generator: torch.Generator | None = None, pad_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b = weak.shape[0]
        lab = labeled.nonzero(as_tuple=True)[0].to(weak.device)
        pl = (~labeled).nonzero(as_tuple=True)[0].to(weak.device) if self.use_pseudo_labels else lab[:0]
        # one forward per image per step: weak (+ strong for L_con) go through the model together
        images = torch.cat([weak, strong]) if self.use_contrastive else weak
        zero = weak.new_zeros((), dtype=torch.float32)  # no graph
        terms = {"loss_sup": zero, "loss_pl": zero, "loss_con": zero}
        if isinstance(self.model, GroundingSamTeacher):  # the VFM teacher: its own heads' losses, same forward
            sizes = content_sizes(pad_mask) if pad_mask is not None else [tuple(weak.shape[-2:])] * b
            sizes += [tuple(strong.shape[-2:])] * (images.shape[0] - b)  # the strong crop has no padding
            p = self.model.run(images, sizes)
            for idx, key in ((lab, "loss_sup"), (pl, "loss_pl")):
                if len(idx):
                    terms[key] = sum(teacher_losses(self.model, p, idx, [targets[i] for i in idx.tolist()],
                                                    self.cfg.mask_weight, self.cfg.dice_weight).values())
            # L_con reads the masks and scores detached: they are fused without a graph
            out = self.model.fuse(p, masks_with_grad=False) if self.use_contrastive else None
        else:
            out = self.model(images, decode=b)  # the strong view only needs embeddings
            out_w = out
            for idx, key, count in ((lab, "loss_sup", num_masks[0]), (pl, "loss_pl", num_masks[1])):
                if len(idx):
                    terms[key] = set_loss(select(out_w, idx), [targets[i] for i in idx.tolist()], count,
                                          pad_mask=pad_mask[idx] if pad_mask is not None else None,
                                          **self.weights)["loss"]
        diagnostics = {}
        if self.use_contrastive:
            timer = self.contrastive_timer
            out_w = replace(out, embeddings=out.embeddings[:b]) if out.mask_logits.shape[0] == b else select(
                out, torch.arange(b, device=weak.device))  # the VFM teacher decodes both views
            out_con = replace(out_w, embeddings=timer.begin(out_w.embeddings))
            terms["loss_con"], diagnostics = self._contrastive(out_con, timer.begin(out.embeddings[b:]), crop_boxes,
                                                               strong_flipped, targets, labeled, generator, pad_mask)
            terms["loss_con"] = timer.end(terms["loss_con"])
        total = (terms["loss_sup"] + self.cfg.pseudo_label_weight * terms["loss_pl"]
                 + self.cfg.contrastive_weight * terms["loss_con"])
        terms["loss"] = total if total.requires_grad else total + self._graph_zero()
        return {**terms, **diagnostics}

    def _contrastive(self, out_w: SegOutput, strong_emb: torch.Tensor, crop_boxes: torch.Tensor,
                     strong_flipped: torch.Tensor, targets: list[dict], labeled: torch.Tensor,
                     generator: torch.Generator | None, pad_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        weak_emb = out_w.embeddings  # (B, D, h, w)
        b, d, h, w = weak_emb.shape
        aligned, valid = strong_to_weak(strong_emb, crop_boxes.to(weak_emb.device), strong_flipped.to(weak_emb.device),
                                        (h, w))  # (B, D, h, w), (B, h, w)
        if pad_mask is not None:  # anchors (and so positives and negatives) only on the weak view's real pixels
            real = F.interpolate(pad_mask[:, None].float().to(valid.device), size=(h, w), mode="bilinear",
                                 align_corners=False)[:, 0] > 0.5
            valid = valid & real
        anchors_all = weak_emb.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        positives_all = aligned.permute(0, 2, 3, 1).reshape(-1, d)
        keep = valid.reshape(-1).nonzero(as_tuple=True)[0]  # pixels seen in both views
        if len(keep) == 0:
            return weak_emb.new_zeros((), dtype=torch.float32), {}
        with torch.no_grad():
            masks = F.interpolate(out_w.mask_logits.detach().float(), size=(h, w), mode="bilinear", align_corners=False)
            mode = "fusion" if cfg.sampler == "uniform" else cfg.sampler
            qhat = sampling_embedding(masks, out_w.class_logits.detach(), mode)  # (B, h*w, E)
            qhat = qhat.reshape(-1, qhat.shape[-1])[keep]  # (P, E)
        pool, cand_q = positives_all[keep], qhat
        banked = len(self.bank) if self.bank is not None else 0
        if banked:
            pool = torch.cat([pool, self.bank.embeddings.to(pool)])
            cand_q = torch.cat([qhat, self.bank.qhat.to(qhat)])
        anchor_rows = torch.arange(len(keep), device=keep.device)
        if len(keep) > cfg.max_anchors:  # bound the cost: a uniform subset of anchors per step
            device = generator.device if generator is not None else keep.device  # draw where the generator lives
            anchor_rows = torch.randperm(len(keep), generator=generator, device=device)[:cfg.max_anchors].to(keep.device)
        anchors, positives = anchors_all[keep][anchor_rows], positives_all[keep][anchor_rows]
        uniform = cfg.sampler == "uniform"  # uniform never draws the anchor's own pixel (its positive)
        loss, plan = contrastive_loss(anchors, positives, pool, None if uniform else qhat[anchor_rows],
                                      None if uniform else cand_q, cfg.num_negatives, temperature=cfg.temperature,
                                      power=cfg.score_power, form=cfg.loss_form, margin=cfg.margin,
                                      exclude=anchor_rows if uniform else None, generator=generator)
        neg = plan.index()  # (P, K) pool rows, for the diagnostics
        if self.bank is not None:
            self.bank.push(positives_all[keep], qhat)
        return loss, self._diagnostics(weak_emb, keep, anchor_rows, neg, banked, targets, labeled, (h, w))

    @torch.no_grad()
    def _diagnostics(self, weak_emb: torch.Tensor, keep: torch.Tensor, anchor_rows: torch.Tensor, neg: torch.Tensor,
                     banked: int, targets: list[dict], labeled: torch.Tensor, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """False-negative rate and instance margin, measured against ground truth (labeled images only)."""
        ids = instance_ids(targets, size)  # (B, h, w)
        ids[~labeled.to(ids.device)] = 0  # pseudo-labels are not ground truth
        flat = ids.reshape(-1).to(keep.device)
        # bank entries (after the batch's own pixels) carry no instance id: never counted as same-instance
        cand_ids = torch.cat([flat[keep], flat.new_full((banked,), -1)])
        fnr = false_negative_rate(neg, flat[keep][anchor_rows], cand_ids)
        emb = weak_emb.permute(0, 2, 3, 1).reshape(-1, weak_emb.shape[1])
        margin = instance_margin(emb, flat)
        dev = weak_emb.device
        return {"false_negative_rate": torch.tensor(fnr, device=dev), "instance_margin": torch.tensor(margin, device=dev)}
