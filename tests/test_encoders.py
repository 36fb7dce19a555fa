"""Encoder details that change what the neck sees: DINOv2's final LayerNorm, frozen BatchNorm."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sskd_ray.config import ModelConfig
from sskd_ray.models.build import build_encoder, tiny_model_config


def test_dinov2_maps_pass_the_final_layernorm_as_transformers_backbone_does():
    """Our maps equal transformers' Dinov2Backbone (apply_layernorm, reshaped) with the same weights."""
    from transformers import Dinov2Backbone

    torch.manual_seed(0)
    encoder = build_encoder(tiny_model_config(ModelConfig(encoder="dinov2", neck="dpt")))
    vit = encoder.vit
    stages = [f"stage{layer}" for layer in encoder.out_layers]
    backbone = Dinov2Backbone(replace_config(vit.config, out_features=stages, apply_layernorm=True,
                                             reshape_hidden_states=True))
    missing = backbone.load_state_dict(vit.state_dict(), strict=False)
    assert not missing.missing_keys
    images = torch.rand(2, 3, 56, 84)  # 4 x 6 patches: not square
    ours = encoder(images)
    theirs = backbone(images).feature_maps
    assert [m.shape for m in ours] == [(2, 32, 4, 6)] * 4
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    raw = vit(images, output_hidden_states=True).hidden_states[encoder.out_layers[-1]][:, 1:]
    assert not torch.allclose(ours[-1].flatten(2).transpose(1, 2), raw)  # the norm really applies


def replace_config(config, **changes):
    values = {k: v for k, v in config.to_dict().items() if k not in ("out_features", "out_indices")}
    return type(config).from_dict({**values, **changes})


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "resnet50"])
def test_frozen_batchnorm_keeps_statistics_and_affine_terms(encoder):
    torch.manual_seed(0)
    cfg = replace(tiny_model_config(ModelConfig(encoder=encoder)), frozen_batchnorm=True)
    model = build_encoder(cfg)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any("bn" in n.lower() or "norm" in n.lower() for n, _ in model.named_parameters())
    before = {n: b.clone() for n, b in model.named_buffers()}
    model.train()
    images = torch.rand(2, 3, 64, 64)
    train_out = model(images)
    model.eval()
    eval_out = model(images)
    for a, b in zip(train_out, eval_out):  # no batch statistics in train mode
        torch.testing.assert_close(a, b)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    plain = build_encoder(replace(cfg, frozen_batchnorm=False))
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in plain.modules())
