"""Building the Grounding-DINO + SAM2 teacher (teacher.py) from a ModelConfig: the tiny test
configs, the released architectures with random weights, or the checkpoints it names."""
from __future__ import annotations

from functools import partial

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (CheckpointImpl, apply_activation_checkpointing,
                                                                         checkpoint_wrapper)
from transformers import AutoTokenizer, GroundingDinoForObjectDetection, MMGroundingDinoForObjectDetection, Sam2Model

from sskd_ray.config import ModelConfig
from sskd_ray.models.prompts import chunk_prompts
from sskd_ray.models.sam2_backend import META_SAM2, build_meta_sam2
from sskd_ray.models.teacher import GroundingSamTeacher
from sskd_ray.models.teacher_configs import (build_tiny_bert_tokenizer, detector_class, full_teacher_configs,
                                             tiny_teacher_configs)
from sskd_ray.models.teacher_segmenters import HF_SAM2
from sskd_ray.models.weights import load_pretrained

DETECTORS = {"grounding-dino": GroundingDinoForObjectDetection, "mm-grounding-dino": MMGroundingDinoForObjectDetection}


def build_grounding_sam_teacher(cfg: ModelConfig, class_names: list[str]) -> GroundingSamTeacher:
    """`preset: tiny` (width 32, random, 128 px), `full` with `pretrained: ""|random` (the released
    architectures, random weights), else the checkpoints `cfg.detector` / `cfg.segmenter`."""
    if cfg.preset == "tiny":
        tokenizer, vocab_size = build_tiny_bert_tokenizer(class_names)
        det_cfg, seg_cfg = tiny_teacher_configs(128, vocab_size, max_text_len=cfg.max_text_len or 32,
                                                mm=cfg.detector_kind == "mm-grounding-dino")
        detector, segmenter = DETECTORS[cfg.detector_kind or "grounding-dino"](det_cfg), None
        short_side, max_side = 128, 128
    elif cfg.preset == "full" and cfg.pretrained in ("", "random"):
        tokenizer, _ = build_tiny_bert_tokenizer(class_names)  # BERT's special ids; words map into its vocab
        det_cfg, seg_cfg = full_teacher_configs()
        if cfg.max_text_len:
            det_cfg.max_text_len = cfg.max_text_len
        detector, segmenter = DETECTORS[cfg.detector_kind or "mm-grounding-dino"](det_cfg), None
        short_side, max_side = cfg.detector_short_side, cfg.detector_max_side
    else:
        tokenizer = load_pretrained(AutoTokenizer, cfg.detector)
        detector = load_pretrained(detector_class(cfg.detector, cfg.detector_kind), cfg.detector)
        segmenter = load_pretrained(Sam2Model, cfg.segmenter) if cfg.segmenter_backend == "transformers" else None
        seg_cfg = None
        short_side, max_side = cfg.detector_short_side, cfg.detector_max_side
    backend = HF_SAM2
    if cfg.segmenter_backend == "transformers" and segmenter is None:
        segmenter = Sam2Model(seg_cfg)
    if cfg.segmenter_backend == "sam2":  # Meta's package: cfg.segmenter = "<config>" or "<config>:<checkpoint.pt>"
        config, _, checkpoint = (cfg.segmenter if cfg.preset != "tiny" else "sam2.1_hiera_t").partition(":")
        segmenter, backend = build_meta_sam2(config, "" if cfg.pretrained in ("", "random") else checkpoint), META_SAM2
    max_text_len = min(cfg.max_text_len or detector.config.max_text_len, detector.config.max_text_len)
    chunks = chunk_prompts(class_names, tokenizer, max_text_len)
    teacher = GroundingSamTeacher(detector, segmenter, chunks, cfg.num_queries, cfg.embed_dim, short_side, max_side,
                                  backend)
    if cfg.freeze_text_encoder:
        for param in teacher.detector.model.text_backbone.parameters():
            param.requires_grad_(False)
    if cfg.gradient_checkpointing:
        checkpoint_detector_layers(teacher.detector)
    return teacher


def checkpoint_detector_layers(detector: nn.Module) -> int:
    """Recompute each Grounding-DINO encoder and decoder layer in backward instead of keeping its
    activations: at 800 x 1600 the encoder's image-text fusion holds ~1 GB per layer (8 heads x 107k
    image tokens x 256 text tokens), more than a 24 GB card has for the whole step. torch's checkpoint
    wrapper keeps the state-dict keys unchanged. Returns how many layers were wrapped."""
    layers = [*detector.model.encoder.layers, *detector.model.decoder.layers]
    chosen = {id(layer) for layer in layers}
    apply_activation_checkpointing(detector.model, checkpoint_wrapper_fn=partial(
        checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT), check_fn=lambda m: id(m) in chosen)
    return len(layers)
