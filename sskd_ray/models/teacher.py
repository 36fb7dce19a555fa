"""The paper's teacher: Grounding-DINO proposes boxes and class scores from the class names as a
text prompt; SAM2 turns each box into a mask; a projection head on SAM2's image features gives the
contrastive embeddings. Both models come from `transformers`.

Fusion into `SegOutput`: for the top-N queries (by best class probability), masks are SAM2's
box-prompted masks, and class_logits = log(p_c * iou) for the C classes and log(1 - max_c p_c * iou)
for "no object", so softmax-based post-processing ranks instances by class score x mask quality.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sskd_ray.config import ModelConfig
from sskd_ray.losses.set_loss import dice_loss
from sskd_ray.models.encoders import IMAGENET_NORM
from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.weights import load_pretrained

DELIMITER_IDS = (0, 101, 102, 1012, 1029)  # [PAD] [CLS] [SEP] . ? (Grounding-DINO's SPECIAL_TOKENS + pad)


def build_prompt(class_names: list[str]) -> str:
    return " ".join(f"{name}." for name in class_names)


def phrase_token_map(input_ids: list[int], num_classes: int) -> torch.Tensor:
    """(C, T) float map: row c marks the tokens of the c-th phrase of a `a. b. c.` prompt."""
    rows = [[0.0] * len(input_ids) for _ in range(num_classes)]
    phrase, inside = 0, False
    for t, tok in enumerate(input_ids):
        if tok in DELIMITER_IDS:
            if inside:
                phrase += 1
            inside = False
            continue
        if phrase < num_classes:
            rows[phrase][t] = 1.0
            inside = True
    if phrase != num_classes:
        raise ValueError(f"prompt tokenised into {phrase} phrases, expected {num_classes}")
    return torch.tensor(rows)


class GroundingSamTeacher(nn.Module):
    def __init__(self, detector: nn.Module, segmenter: nn.Module, input_ids: list[int], num_classes: int, num_boxes: int, embed_dim: int,
                 detector_size: int, segmenter_size: int):
        super().__init__()
        self.detector, self.segmenter = detector, segmenter
        self.num_boxes, self.detector_size, self.segmenter_size = num_boxes, detector_size, segmenter_size
        self.register_buffer("input_ids", torch.tensor([input_ids]), persistent=False)  # (1, T)
        self.register_buffer("attention_mask", torch.ones(1, len(input_ids), dtype=torch.long), persistent=False)
        self.register_buffer("token_map", phrase_token_map(input_ids, num_classes), persistent=False)
        width = segmenter.config.vision_config.fpn_hidden_size
        self.embed_head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, embed_dim, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_NORM[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_NORM[1]).view(1, 3, 1, 1), persistent=False)
        self.backbone_prefixes = ("detector.model.backbone", "segmenter.vision_encoder")

    def _normalise(self, images: torch.Tensor, size: int) -> torch.Tensor:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return (images - self.mean) / self.std

    def _detect(self, images: torch.Tensor, labels: list[dict] | None = None) -> Any:
        b = images.shape[0]
        return self.detector(pixel_values=self._normalise(images, self.detector_size),
                             input_ids=self.input_ids.expand(b, -1),
                             attention_mask=self.attention_mask.expand(b, -1), labels=labels)

    def _class_probs(self, token_logits: torch.Tensor) -> torch.Tensor:
        """(B, Q, T) token logits -> (B, Q, C) class probabilities (max over each phrase's tokens)."""
        t = token_logits.shape[-1]  # the detector's max_text_len, >= the prompt's length
        phrase = F.pad(self.token_map, (0, max(0, t - self.token_map.shape[1])))[:, :t].bool()  # (C, T)
        masked = token_logits[:, :, None, :].masked_fill(~phrase, float("-inf"))  # (B, Q, C, T)
        return masked.amax(-1).sigmoid()

    def _image_embeddings(self, images: torch.Tensor) -> list[torch.Tensor]:
        # As Sam2Model.get_image_embeddings, without its no_grad, so the vision encoder can be trained.
        b = images.shape[0]
        feats = self.segmenter.get_image_features(self._normalise(images, self.segmenter_size),
                                                  return_dict=True).fpn_hidden_states
        feats = list(feats)
        feats[-1] = feats[-1] + self.segmenter.no_memory_embedding
        sizes = self.segmenter.backbone_feature_sizes
        return [f.permute(1, 2, 0).reshape(b, -1, *s) for f, s in zip(feats, sizes)]

    def segment_boxes(self, embeddings: list[torch.Tensor], boxes_xyxy: torch.Tensor):
        """boxes (B, n, 4) normalised xyxy -> mask logits (B, n, h, w), iou (B, n)."""
        out = self.segmenter(image_embeddings=embeddings, input_boxes=boxes_xyxy * self.segmenter_size,
                             multimask_output=False)
        return out.pred_masks[:, :, 0], out.iou_scores[:, :, 0]

    def forward(self, images: torch.Tensor) -> SegOutput:
        det = self._detect(images)
        probs = self._class_probs(det.logits)  # (B, Q, C)
        top = probs.amax(-1).topk(min(self.num_boxes, probs.shape[1]), dim=1).indices  # (B, N)
        probs = probs.gather(1, top[..., None].expand(-1, -1, probs.shape[-1]))
        boxes = det.pred_boxes.gather(1, top[..., None].expand(-1, -1, 4))  # (B, N, 4) cx cy w h
        xyxy = torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1).clamp(0, 1)
        embeddings = self._image_embeddings(images)
        mask_logits, iou = self.segment_boxes(embeddings, xyxy)
        scored = (probs * iou.sigmoid()[..., None]).clamp(1e-6, 1 - 1e-6)  # SAM2's iou head is a logit here
        no_object = (1 - scored.amax(-1, keepdim=True)).clamp_min(1e-6)
        class_logits = torch.cat([scored.log(), no_object.log()], dim=-1)
        embed = F.normalize(self.embed_head(embeddings[-1]), dim=1)
        return SegOutput(mask_logits, class_logits, embed)

    def adaptation_loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Teacher adaptation: Grounding-DINO's own detection loss + BCE/Dice of SAM2 masks prompted
        with the ground-truth boxes. targets: {"labels" (n,), "masks" (n, H, W) bool} per image."""
        labels, boxes = [], []
        for t in targets:
            xyxy = masks_to_boxes(t["masks"]) / torch.tensor([t["masks"].shape[-1], t["masks"].shape[-2]] * 2)
            cxcywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], -1)
            labels.append({"class_labels": t["labels"].to(images.device), "boxes": cxcywh.to(images.device)})
            boxes.append(xyxy.to(images.device))
        det_loss = self._detect(images, labels).loss
        embeddings = self._image_embeddings(images)
        mask_loss = images.new_zeros(())
        count = 0
        for b, t in enumerate(targets):  # images have different instance counts: prompt one image at a time
            if len(t["labels"]) == 0:
                continue
            logits, _ = self.segment_boxes([e[b:b + 1] for e in embeddings], boxes[b][None])
            gt = F.interpolate(t["masks"][None].float().to(images.device), size=logits.shape[-2:], mode="bilinear",
                               align_corners=False)[0]
            pred, gt = logits[0].flatten(1), gt.flatten(1)  # (n, h*w)
            bce = F.binary_cross_entropy_with_logits(pred, gt, reduction="none").mean(1)
            mask_loss = mask_loss + (bce + dice_loss(pred, gt)).sum()
            count += len(t["labels"])
        mask_loss = mask_loss / max(count, 1)
        return {"loss_detection": det_loss, "loss_mask": 5.0 * mask_loss}


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(n, H, W) bool -> (n, 4) xyxy in pixels (exclusive max), zeros for empty masks."""
    out = torch.zeros(masks.shape[0], 4)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs):
            out[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return out


def build_tiny_bert_tokenizer(class_names: list[str]):
    """A WordPiece tokenizer that keeps BERT's special ids ([PAD]=0, [CLS]=101, [SEP]=102, .=1012,
    ?=1029), which Grounding-DINO's loss relies on, for tiny random-weight teachers in tests."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [f"[unused{i}]" for i in range(1100)]
    for i, tok in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}.items():
        vocab[i] = tok
    words = sorted({w for name in class_names for w in name.lower().replace("-", " - ").split()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    for tok in words + letters + [f"##{c}" for c in letters] + ["-", "/"]:
        if tok not in vocab:
            vocab.append(tok)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]"), len(vocab)


def tiny_teacher_configs(image_size: int, vocab_size: int):
    from transformers import BertConfig, GroundingDinoConfig, Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig, SwinConfig

    swin = SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, image_size=image_size,
                      out_features=["stage2", "stage3", "stage4"])
    bert = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      vocab_size=vocab_size)
    detector = GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1,
                                   decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=20,
                                   encoder_attention_heads=2, decoder_attention_heads=2, num_feature_levels=4,
                                   max_text_len=32)
    s = image_size
    hiera = Sam2HieraDetConfig(hidden_size=16, embed_dim_per_stage=[16, 32, 64, 128], blocks_per_stage=[1, 1, 2, 1],
                               num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3],
                               window_size_per_stage=[4, 4, 4, 4], image_size=[s, s],
                               window_positional_embedding_background_size=[4, 4])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=32,
                              backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]])
    segmenter = Sam2Config(vision_config=vision, prompt_encoder_config={"hidden_size": 32, "image_size": s,
                                                                        "patch_size": 16},
                           mask_decoder_config={"hidden_size": 32})
    return detector, segmenter


def full_teacher_configs():
    """mm-Grounding-DINO-L (Swin-L + BERT-base) and SAM2.1-L (Hiera-L) layouts, for random-weight builds."""
    from transformers import BertConfig, MMGroundingDinoConfig, Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig, SwinConfig

    swin = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, image_size=384,
                      out_features=["stage2", "stage3", "stage4"])
    detector = MMGroundingDinoConfig(backbone_config=swin, text_config=BertConfig(), num_feature_levels=4)
    hiera = Sam2HieraDetConfig(hidden_size=144, embed_dim_per_stage=[144, 288, 576, 1152],
                               blocks_per_stage=[2, 6, 36, 4], num_attention_heads_per_stage=[2, 4, 8, 16],
                               global_attention_blocks=[23, 33, 43], window_size_per_stage=[8, 4, 16, 8],
                               image_size=[1024, 1024], window_positional_embedding_background_size=[7, 7])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[1152, 576, 288, 144])
    return detector, Sam2Config(vision_config=vision)


def build_grounding_sam_teacher(cfg: ModelConfig, class_names: list[str]) -> GroundingSamTeacher:
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection, Sam2Model

    if cfg.preset == "tiny":
        tokenizer, vocab_size = build_tiny_bert_tokenizer(class_names)
        det_cfg, seg_cfg = tiny_teacher_configs(128, vocab_size)
        detector, segmenter = GroundingDinoForObjectDetection(det_cfg), Sam2Model(seg_cfg)
        det_size, seg_size = 128, 128
    elif cfg.preset == "full" and cfg.pretrained in ("", "random"):  # paper's architecture, random weights
        tokenizer, _ = build_tiny_bert_tokenizer(class_names)
        det_cfg, seg_cfg = full_teacher_configs()
        detector = _detector_class(cfg.detector)(det_cfg)
        segmenter = Sam2Model(seg_cfg)
        det_size, seg_size = 800, 1024
    else:
        detector_cls = _detector_class(cfg.detector)
        tokenizer = load_pretrained(AutoTokenizer, cfg.detector)
        detector = load_pretrained(detector_cls, cfg.detector)
        segmenter = load_pretrained(Sam2Model, cfg.segmenter)
        det_size, seg_size = 800, segmenter.config.vision_config.backbone_config.image_size[0]
    input_ids = tokenizer(build_prompt(class_names))["input_ids"]
    teacher = GroundingSamTeacher(detector, segmenter, input_ids, len(class_names),
                                  cfg.num_queries, cfg.embed_dim, det_size, seg_size)
    return teacher


def _detector_class(name: str):
    import transformers

    if "mm_grounding_dino" in name.lower() or "mm-grounding-dino" in name.lower():
        return transformers.MMGroundingDinoForObjectDetection
    return transformers.GroundingDinoForObjectDetection
