"""Necks: 4 encoder maps -> 4 maps of one width `dim`, finest first.

FPN: lateral 1x1 convs, top-down sum, 3x3 output convs (Lin et al., 2017).
DPT: the "reassemble + fusion" neck of Ranftl et al., 2021 (idea only, written here): ViT maps at
one stride are projected and resampled to strides x4, x2, x1, x1/2 of the patch grid, then fused
top-down with residual conv units.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(_conv(c, dim, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Sequential(_conv(dim, dim), nn.GroupNorm(min(32, dim // 4), dim), nn.ReLU())
                                    for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.lateral[-1](feats[-1])
        outs = [self.output[-1](x)]
        for i in range(len(feats) - 2, -1, -1):
            lat = self.lateral[i](feats[i])
            x = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](x))
        return outs


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.conv2 = _conv(dim, dim), _conv(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.skip_unit, self.unit = ResidualConvUnit(dim), ResidualConvUnit(dim)
        self.project = _conv(dim, dim, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.skip_unit(skip)
        return self.project(self.unit(x))


class DPT(nn.Module):
    def __init__(self, in_channels: list[int], dim: int, reassemble_channels: list[int]):
        super().__init__()
        c = reassemble_channels
        self.project = nn.ModuleList(_conv(cin, cout, 1) for cin, cout in zip(in_channels, c))
        self.resample = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], 4, stride=4),  # x4
            nn.ConvTranspose2d(c[1], c[1], 2, stride=2),  # x2
            nn.Identity(),  # x1
            nn.Conv2d(c[3], c[3], 3, stride=2, padding=1),  # x1/2
        ])
        self.to_dim = nn.ModuleList(_conv(ci, dim) for ci in c)
        self.fusion = nn.ModuleList(FusionBlock(dim) for _ in c)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = [to(rs(pr(f))) for f, pr, rs, to in zip(feats, self.project, self.resample, self.to_dim)]
        x = self.fusion[-1](maps[-1], None)
        outs = [x]
        for i in range(len(maps) - 2, -1, -1):
            x = self.fusion[i](x, maps[i])
            outs.insert(0, x)
        return outs
