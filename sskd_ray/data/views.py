"""Weak and strong views of one image (METHOD.md Sec. 3.2), with the geometry that links them.

Weak: optional horizontal flip, resize to `size`. Strong: a random resized crop of the weak view,
then colour jitter, random grayscale and blur, and its own optional flip. The crop box (in the
weak view's normalised coordinates) and the flip are returned so that
`sskd_ray.losses.correspondence.strong_to_weak` can pair pixels at the same scene location.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ViewPair:
    weak: torch.Tensor  # (3, S, S) in [0, 1]
    strong: torch.Tensor  # (3, S, S) in [0, 1]
    crop_box: torch.Tensor  # (4,) x0, y0, x1, y1 of the strong crop in weak-view coordinates
    strong_flipped: torch.Tensor  # () bool: strong view flipped after the crop
    weak_flipped: bool  # weak view flipped relative to the original image (targets must follow)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    # reflect padding: zero padding would darken a border band that the weak view does not have,
    # a cue the contrastive loss could learn instead of the scene
    out = F.pad(image[None], (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def colour_jitter(image: torch.Tensor, generator: torch.Generator, strength: float = 0.4) -> torch.Tensor:
    def factor() -> float:
        return 1 + strength * (2 * torch.rand((), generator=generator).item() - 1)

    image = image * factor()  # brightness
    mean = image.mean()
    image = (image - mean) * factor() + mean  # contrast
    grey = image.mean(0, keepdim=True)
    image = (image - grey) * factor() + grey  # saturation
    return image.clamp(0, 1)


def make_views(image: torch.Tensor, size: int, generator: torch.Generator, min_crop: float = 0.35,
               flip: bool = True, photometric: bool = True) -> ViewPair:
    """image (3, H, W) in [0, 1] -> ViewPair at size x size. `photometric=False` keeps only the
    geometry (for checking correspondence)."""
    def coin(p: float = 0.5) -> bool:
        return bool(torch.rand((), generator=generator) < p)

    weak_flipped = flip and coin()
    weak = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    if weak_flipped:
        weak = weak.flip(-1)
    scale = min_crop + (1 - min_crop) * torch.rand((), generator=generator).item()  # side fraction
    x0 = (1 - scale) * torch.rand((), generator=generator).item()
    y0 = (1 - scale) * torch.rand((), generator=generator).item()
    lo, hi = int(round(y0 * size)), max(int(round((y0 + scale) * size)), int(round(y0 * size)) + 1)
    left, right = int(round(x0 * size)), max(int(round((x0 + scale) * size)), int(round(x0 * size)) + 1)
    box = torch.tensor([left / size, lo / size, right / size, hi / size])  # exactly the pixels taken
    strong = F.interpolate(weak[None, :, lo:hi, left:right], size=(size, size), mode="bilinear",
                           align_corners=False)[0]
    strong_flipped = flip and coin()
    if strong_flipped:
        strong = strong.flip(-1)
    if photometric:
        strong = colour_jitter(strong, generator)
        if coin(0.2):
            strong = strong.mean(0, keepdim=True).expand(3, -1, -1).clone()
        if coin(0.5):
            strong = _blur(strong, 0.1 + 1.9 * torch.rand((), generator=generator).item())
    return ViewPair(weak, strong.clamp(0, 1), box, torch.tensor(strong_flipped), weak_flipped)
