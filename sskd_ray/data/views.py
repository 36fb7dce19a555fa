"""Weak and strong views of one image (docs/method.md Sec. 3.2), with the geometry that links them.

Weak: the image scaled (aspect kept) so its short side is `size` times a factor drawn from
`scale_jitter`, an optional horizontal flip, then a random `crop_size` (h, w) crop; where the scaled
image is smaller than the crop it is padded at the bottom / right and `pad_mask` marks the real
pixels (the Mask2Former / detectron2 recipe: ResizeShortestEdge-style jitter + fixed-size crop).
Strong: a random resized crop of the weak view's real pixels with the crop's aspect ratio, resized
to the crop size, then colour jitter, random grayscale and blur, and its own optional flip; it
never holds padding. The crop box (in the weak view's normalised coordinates) and the flip are
returned so that `sskd_ray.losses.correspondence.strong_to_weak` can pair pixels at the same scene
location. With no jitter and a crop equal to the scaled image (the demo's square scenes) no extra
random numbers are drawn, so the views are those of the square recipe before native resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ViewPair:
    weak: torch.Tensor  # (3, h, w) in [0, 1], h, w = the crop size
    strong: torch.Tensor  # (3, h, w) in [0, 1]
    crop_box: torch.Tensor  # (4,) x0, y0, x1, y1 of the strong crop in weak-view coordinates
    strong_flipped: torch.Tensor  # () bool: strong view flipped after the crop
    weak_flipped: bool  # weak view flipped relative to the original image (targets must follow)
    pad_mask: torch.Tensor | None = None  # (h, w) bool, True on the weak view's real pixels
    scaled_size: tuple[int, int] = (0, 0)  # the image's size after the scale jitter, before the crop
    offset: tuple[int, int] = (0, 0)  # (top, left) of the crop in the scaled (flipped) image


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


def scaled_size(size: tuple[int, int], short_side: float) -> tuple[int, int]:
    """(H, W) -> the size with short side `short_side`, aspect kept (each side at least 1)."""
    h, w = size
    f = short_side / min(h, w)
    return max(1, int(round(h * f))), max(1, int(round(w * f)))


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item() if hi > lo else lo


def _weak_view(image: torch.Tensor, size: int, crop: tuple[int, int], jitter: tuple[float, float],
               generator: torch.Generator, flip: bool):
    """-> (weak (3, ch, cw), flipped, pad_mask (ch, cw), scaled (sh, sw), offset (top, left))."""
    flipped = flip and bool(torch.rand((), generator=generator) < 0.5)
    sh, sw = scaled_size(tuple(image.shape[-2:]), size * _uniform(generator, *jitter))
    scaled = image
    if (sh, sw) != tuple(image.shape[-2:]):
        scaled = F.interpolate(image[None], size=(sh, sw), mode="bilinear", align_corners=False,
                               antialias=sh < image.shape[-2])[0]
    if flipped:
        scaled = scaled.flip(-1)
    ch, cw = crop
    top = int(torch.randint(0, sh - ch + 1, (), generator=generator)) if sh > ch else 0
    left = int(torch.randint(0, sw - cw + 1, (), generator=generator)) if sw > cw else 0
    real = scaled[:, top:top + ch, left:left + cw]  # (3, rh, rw), rh <= ch, rw <= cw
    rh, rw = real.shape[-2:]
    weak = F.pad(real, (0, cw - rw, 0, ch - rh))  # zeros at the bottom / right
    pad_mask = torch.zeros(ch, cw, dtype=torch.bool, device=image.device)
    pad_mask[:rh, :rw] = True
    return weak, flipped, pad_mask, (sh, sw), (top, left)


def make_views(image: torch.Tensor, size: int, generator: torch.Generator, min_crop: float = 0.35,
               flip: bool = True, photometric: bool = True, crop_size: tuple[int, int] | None = None,
               scale_jitter: tuple[float, float] = (1.0, 1.0)) -> ViewPair:
    """image (3, H, W) in [0, 1] -> ViewPair at `crop_size` (default size x size). `size` is the base
    short side, multiplied by a factor drawn uniformly from `scale_jitter`. `photometric=False` keeps
    only the geometry (for checking correspondence)."""
    def coin(p: float = 0.5) -> bool:
        return bool(torch.rand((), generator=generator) < p)

    ch, cw = crop_size or (size, size)
    weak, weak_flipped, pad_mask, scaled, offset = _weak_view(image, size, (ch, cw), scale_jitter, generator, flip)
    rh, rw = int(pad_mask[:, 0].sum()), int(pad_mask[0].sum())  # the real pixels' extent
    # the largest box with the crop's aspect inside the real pixels, as frame fractions; the strong
    # crop takes `scale` of its sides (square, unpadded: the whole view, as before)
    f = min(rh / ch, rw / cw)
    scale = min_crop + (1 - min_crop) * torch.rand((), generator=generator).item()  # side fraction
    x0 = (rw / cw - scale * f) * torch.rand((), generator=generator).item()
    y0 = (rh / ch - scale * f) * torch.rand((), generator=generator).item()
    lo, hi = int(round(y0 * ch)), max(int(round((y0 + scale * f) * ch)), int(round(y0 * ch)) + 1)
    left, right = int(round(x0 * cw)), max(int(round((x0 + scale * f) * cw)), int(round(x0 * cw)) + 1)
    hi, right = min(hi, rh), min(right, rw)  # rounding never reaches into the padding
    lo, left = min(lo, hi - 1), min(left, right - 1)
    box = torch.tensor([left / cw, lo / ch, right / cw, hi / ch])  # exactly the pixels taken
    strong = F.interpolate(weak[None, :, lo:hi, left:right], size=(ch, cw), mode="bilinear",
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
    return ViewPair(weak, strong.clamp(0, 1), box, torch.tensor(strong_flipped), weak_flipped, pad_mask,
                    scaled, offset)
