"""Geometry between the teacher's input frame and the frames its two models see.

The input is a batch padded at the bottom/right: image b's content is the top-left `sizes[b] = (h, w)`
of the (H, W) frame. Grounding-DINO sees each content resized so its short side is `short`, its long
side at most `max_side` (the released models' 800 / 1333), padded with a `pixel_mask`; its boxes are
normalised to the content. SAM2 sees each content resized so its long side is S, padded to S x S
(as SAM does); a content-normalised box maps to SAM2 pixels by the content's size there, and a mask
over SAM2's square maps back by reading the content part of it at the input frame's pixel centres.
All functions are pure and work on any device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_LOGIT = -1e4  # mask logits outside an image's content (finite: safe in bf16 / fp16 losses)


def content_sizes(images: torch.Tensor, sizes: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
    h, w = images.shape[-2:]
    if sizes is None:
        return [(h, w)] * images.shape[0]
    if len(sizes) != images.shape[0]:
        raise ValueError(f"image_sizes has {len(sizes)} entries for a batch of {images.shape[0]}")
    for ch, cw in sizes:
        if not (0 < ch <= h and 0 < cw <= w):
            raise ValueError(f"image size {(ch, cw)} does not fit in the batch frame {(h, w)}")
    return [(int(ch), int(cw)) for ch, cw in sizes]


def short_side_size(h: int, w: int, short: int, max_side: int) -> tuple[int, int]:
    """(h, w) scaled so the short side is `short` unless the long side would pass `max_side`."""
    scale = min(short / min(h, w), max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def long_side_size(h: int, w: int, side: int) -> tuple[int, int]:
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_contents(images: torch.Tensor, sizes: list[tuple[int, int]], targets: list[tuple[int, int]],
                    frame: tuple[int, int], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop each content, resize it to its target size, paste it top-left in a `frame` filled with
    `fill`. Returns (B, C, *frame) and the (B, *frame) long mask of content pixels (1 = content)."""
    out = images.new_full((images.shape[0], images.shape[1], *frame), fill)
    mask = torch.zeros(images.shape[0], *frame, dtype=torch.long, device=images.device)
    for b, ((h, w), (th, tw)) in enumerate(zip(sizes, targets)):
        out[b, :, :th, :tw] = F.interpolate(images[b:b + 1, :, :h, :w], size=(th, tw), mode="bilinear",
                                            align_corners=False, antialias=True)[0]
        mask[b, :th, :tw] = 1
    return out, mask


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)


def output_frame(frame: tuple[int, int], side: int) -> tuple[float, tuple[int, int]]:
    """Scale and size of an output grid over the input frame whose long side is at most `side`."""
    scale = min(1.0, side / max(frame))
    return scale, (max(1, round(frame[0] * scale)), max(1, round(frame[1] * scale)))


def square_to_frame(maps: torch.Tensor, fractions: list[tuple[float, float]], contents: list[tuple[int, int]],
                    out: tuple[int, int], fill: float) -> torch.Tensor:
    """(B, N, s, s) maps over a padded square whose top-left `fractions[b]` = (h'/S, w'/S) hold image b
    -> (B, N, *out) over the output frame, image b's content in its top-left `contents[b]` = (ho, wo)
    and `fill` elsewhere. Each output pixel centre reads the square at the same image point
    (bilinear, as SAM's own post-processing up-samples its masks)."""
    result = maps.new_full((maps.shape[0], maps.shape[1], *out), fill)
    for b, ((fh, fw), (ho, wo)) in enumerate(zip(fractions, contents)):
        ys = (torch.arange(ho, device=maps.device, dtype=torch.float32) + 0.5) / ho * fh * 2 - 1  # grid_sample coords
        xs = (torch.arange(wo, device=maps.device, dtype=torch.float32) + 0.5) / wo * fw * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None].to(maps.dtype)  # (1, ho, wo, 2): (x, y)
        sampled = F.grid_sample(maps[b:b + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
        result[b, :, :ho, :wo] = sampled[0]
    return result


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(n, H, W) bool -> (n, 4) xyxy in pixels (exclusive max), zeros for empty masks; on masks' device."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)  # (n, H), (n, W)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(-1)
    y1 = torch.where(rows, ys + 1, 0).amax(-1)
    x0 = torch.where(cols, xs, w).amin(-1)
    x1 = torch.where(cols, xs + 1, 0).amax(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1).float()
    return torch.where(masks.flatten(1).any(-1, keepdim=True), boxes, torch.zeros_like(boxes))
