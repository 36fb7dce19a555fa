"""The paper's teacher: Grounding-DINO proposes boxes and class scores from the class names as a
text prompt; SAM2 turns each box into a mask; a projection head on SAM2's image features gives the
contrastive embeddings. Both models come from `transformers`.

Fusion into `SegOutput`: for the top-N queries (by best class probability), masks are SAM2's
box-prompted masks, and class_logits = log(p_c * iou) for the C classes and log(1 - max_c p_c * iou)
for "no object", so softmax-based post-processing ranks instances by class score x mask quality.
SAM2's `iou_scores` are already probabilities (its IoU head ends in a sigmoid: `Sam2MaskDecoder`'s
`iou_prediction_head` is built with `sigmoid_output=True`), so they are used as they come.

Inputs follow the models' contract: `images` (B, 3, H, W) in [0, 1], padded bottom/right, and
`image_sizes` the content (h, w) of each (None: the whole frame). Each model sees each content at
native aspect (teacher_frames.py); outputs cover the whole input frame.

Large vocabularies run as several prompt chunks (prompts.py) in ONE detector call: the batch is
repeated once per chunk (rows k * B + b). The detector's public API has no way to reuse the Swin
features across different texts, so the vision backbone runs once per chunk; with <= 256 tokens of
class names (Cityscapes, the demo) there is one chunk.

The model's builder is `teacher_build.py` (it imports transformers' detector and SAM2 classes, which
take seconds); its training losses are `sskd_ray/losses/teacher_adaptation.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sskd_ray.models.encoders import IMAGENET_NORM
from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.prompts import PromptChunks
from sskd_ray.models.teacher_frames import (PAD_LOGIT, content_sizes, cxcywh_to_xyxy, long_side_size, output_frame,
                                            resize_contents, short_side_size, square_to_frame)
from sskd_ray.models.teacher_segmenters import HF_SAM2, SegmenterBackend


@dataclass
class TeacherPass:
    """One forward of both models over a batch, shared by the fused output and the training losses
    (losses/teacher_adaptation.py)."""
    det: Any  # the detector's output over K * B rows
    sizes: list[tuple[int, int]]  # content sizes in the input frame
    frame: tuple[int, int]  # the input frame (H, W)
    seg_sizes: list[tuple[int, int]]  # content sizes in SAM2's square
    embeddings: Any  # SAM2 image embeddings (backend-specific)


class GroundingSamTeacher(nn.Module):
    def __init__(self, detector: nn.Module, segmenter: nn.Module, chunks: PromptChunks, num_boxes: int,
                 embed_dim: int, detector_short_side: int, detector_max_side: int,
                 backend: SegmenterBackend = HF_SAM2):
        super().__init__()
        if getattr(detector.config, "auxiliary_loss", False):
            raise ValueError("the teacher computes Grounding-DINO's loss from its public outputs, which carry no "
                             "per-layer predictions: set the detector's auxiliary_loss=False")
        self.detector, self.segmenter, self.backend = detector, segmenter, backend
        self.num_boxes, self.short_side, self.max_side = num_boxes, detector_short_side, detector_max_side
        self.segmenter_size = backend.image_size(segmenter)
        self.num_classes = len(chunks.class_chunk)
        length = max(len(ids) for ids in chunks.input_ids)
        ids = torch.zeros(len(chunks.input_ids), length, dtype=torch.long)
        for k, chunk_ids in enumerate(chunks.input_ids):
            ids[k, :len(chunk_ids)] = torch.tensor(chunk_ids)
        self.register_buffer("input_ids", ids, persistent=False)  # (K, T), [PAD] = 0 after each chunk
        self.register_buffer("attention_mask", (ids != 0).long(), persistent=False)
        span = max(e - s for s, e in chunks.class_span)
        filler = detector.config.max_text_len  # index of an appended -inf column
        index = torch.full((self.num_classes, span), filler, dtype=torch.long)
        for c, (s, e) in enumerate(chunks.class_span):
            index[c, :e - s] = torch.arange(s, e)
        self.register_buffer("span_index", index, persistent=False)  # (C, L) token positions per class
        self.register_buffer("class_chunk", torch.tensor(chunks.class_chunk), persistent=False)  # (C,)
        local = torch.zeros(self.num_classes, dtype=torch.long)
        for members in chunks.chunk_classes:
            local[torch.tensor(members)] = torch.arange(len(members))
        self.register_buffer("class_local", local, persistent=False)  # (C,) phrase index inside its chunk
        width = backend.feature_width(segmenter)
        self.embed_head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, embed_dim, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_NORM[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_NORM[1]).view(1, 3, 1, 1), persistent=False)
        self.backbone_prefixes = ("detector.model.backbone", *backend.backbone_prefixes)

    # -- the two models ---------------------------------------------------------------------------
    def _detect(self, normed: torch.Tensor, sizes: list[tuple[int, int]]) -> Any:
        targets = [short_side_size(h, w, self.short_side, self.max_side) for h, w in sizes]
        frame = (max(t[0] for t in targets), max(t[1] for t in targets))
        pixels, pixel_mask = resize_contents(normed, sizes, targets, frame)
        k, b = self.input_ids.shape[0], normed.shape[0]
        return self.detector(pixel_values=pixels.repeat(k, 1, 1, 1), pixel_mask=pixel_mask.repeat(k, 1, 1),
                             input_ids=self.input_ids.repeat_interleave(b, 0),
                             attention_mask=self.attention_mask.repeat_interleave(b, 0))

    def run(self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None) -> TeacherPass:
        """One detector call and one SAM2 image-encoder pass over the whole batch."""
        sizes = content_sizes(images, image_sizes)
        normed = (images - self.mean) / self.std
        det = self._detect(normed, sizes)
        s = self.segmenter_size
        seg_sizes = [long_side_size(h, w, s) for h, w in sizes]
        pixels, _ = resize_contents(normed, sizes, seg_sizes, (s, s))
        embeddings = self.backend.encode(self.segmenter, pixels)
        return TeacherPass(det, sizes, tuple(images.shape[-2:]), seg_sizes, embeddings)

    def class_probs(self, token_logits: torch.Tensor, batch: int) -> torch.Tensor:
        """(K * B, Q, T) token logits -> (B, K * Q, C) class probabilities: max over the class's tokens
        for the queries of its own chunk, 0 for the queries of other chunks."""
        k = self.input_ids.shape[0]
        logits = token_logits.view(k, batch, *token_logits.shape[1:]).transpose(0, 1)  # (B, K, Q, T)
        logits = F.pad(logits, (0, 1), value=float("-inf"))  # column T: the filler of short spans
        per_class = logits[..., self.span_index].amax(-1)  # (B, K, Q, C)
        own = self.class_chunk[None, :] == torch.arange(k, device=logits.device)[:, None]  # (K, C)
        per_class = per_class.masked_fill(~own[None, :, None, :], float("-inf"))
        return per_class.sigmoid().flatten(1, 2)

    def segment_boxes(self, embeddings: Any, boxes_xyxy: torch.Tensor, seg_sizes: list[tuple[int, int]]):
        """Content-normalised xyxy boxes (B, n, 4) -> SAM2 mask logits over its square, IoU (B, n)."""
        scale = boxes_xyxy.new_tensor([[w, h, w, h] for h, w in seg_sizes])[:, None]  # (B, 1, 4)
        return self.backend.decode(self.segmenter, embeddings, boxes_xyxy * scale)

    # -- outputs ------------------------------------------------------------------------------------
    def fuse(self, p: TeacherPass, masks_with_grad: bool = True) -> SegOutput:
        """The teacher's fused output. `masks_with_grad` False computes the masks and scores without a
        graph (the embeddings keep theirs): SAM2's decoder over N prompts per image, upsampled to 256 x
        256, is the largest activation of a training step, and L_con reads masks and scores only
        detached, to choose negatives."""
        with torch.set_grad_enabled(masks_with_grad and torch.is_grad_enabled()):
            mask_logits, class_logits = self._fused_masks(p)
        feats = self.embed_head(self.backend.embedding_map(p.embeddings))  # (B, D, s/16, s/16)
        embed = F.normalize(self.to_frame(feats, p, feats.shape[-1], 0.0), dim=1)
        return SegOutput(mask_logits, class_logits, embed)

    def _fused_masks(self, p: TeacherPass) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM2 masks for the top-N boxes in the input frame, and their class logits (class prob x IoU)."""
        b = len(p.sizes)
        probs = self.class_probs(p.det.logits, b)  # (B, K*Q, C)
        boxes = p.det.pred_boxes.view(-1, b, *p.det.pred_boxes.shape[1:]).transpose(0, 1).flatten(1, 2)  # (B, K*Q, 4)
        top = probs.amax(-1).topk(min(self.num_boxes, probs.shape[1]), dim=1).indices  # (B, N)
        probs = probs.gather(1, top[..., None].expand(-1, -1, probs.shape[-1]))
        boxes = cxcywh_to_xyxy(boxes.gather(1, top[..., None].expand(-1, -1, 4))).clamp(0, 1)  # content-normalised
        masks, iou = self.segment_boxes(p.embeddings, boxes, p.seg_sizes)  # (B, N, s, s), (B, N) in [0, 1]
        mask_logits = self.to_frame(masks, p, masks.shape[-1], PAD_LOGIT)
        scored = (probs * iou[..., None]).clamp(1e-6, 1 - 1e-6)
        no_object = (1 - scored.amax(-1, keepdim=True)).clamp_min(1e-6)
        return mask_logits, torch.cat([scored.log(), no_object.log()], dim=-1)

    def to_frame(self, maps: torch.Tensor, p: TeacherPass, side: int, fill: float) -> torch.Tensor:
        scale, out = output_frame(p.frame, side)
        contents = [(max(1, round(h * scale)), max(1, round(w * scale))) for h, w in p.sizes]
        s = self.segmenter_size
        return square_to_frame(maps, [(h / s, w / s) for h, w in p.seg_sizes], contents, out, fill)

    def forward(self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None) -> SegOutput:
        return self.fuse(self.run(images, image_sizes))
