"""Predictions drawn for people: masks tinted per instance, outlines, "class score" labels. Used by
`jobs/predict.py` (deploy/predict.py) and the run report's prediction grid (eval/report.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sskd_ray.models.postprocess import Instance

PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)])


def draw_overlay(image: np.ndarray, instances: list[Instance], class_names: list[str], scale: int = 0,
                 min_side: int = 384) -> Image.Image:
    """Masks tinted per instance with outlines, and 'class score' labels; small images are enlarged
    (nearest) so a 128-px scene stays readable."""
    scale = scale or max(1, -(-min_side // min(image.shape[:2])))
    canvas = image.astype(np.float32).copy()
    for i, inst in enumerate(instances):
        colour = PALETTE[i % len(PALETTE)]
        canvas[inst.mask] = 0.45 * canvas[inst.mask] + 0.55 * colour
    big = Image.fromarray(canvas.astype(np.uint8)).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    font = ImageFont.load_default(size=max(12, 6 * scale))
    for i, inst in enumerate(instances):
        colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        ys, xs = np.nonzero(inst.mask)
        if len(xs) == 0:
            continue
        edge = inst.mask ^ np.pad(inst.mask, 1)[:-2, 1:-1] & np.pad(inst.mask, 1)[2:, 1:-1] \
            & np.pad(inst.mask, 1)[1:-1, :-2] & np.pad(inst.mask, 1)[1:-1, 2:]
        for y, x in zip(*np.nonzero(edge)):
            draw.rectangle([x * scale, y * scale, x * scale + scale - 1, y * scale + scale - 1], fill=colour)
        text = f"{class_names[inst.label]} {inst.score:.2f}"
        x0, y0 = int(xs.min()) * scale, max(0, int(ys.min()) * scale - font.size - 4)
        box = draw.textbbox((x0, y0), text, font=font)
        draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=(0, 0, 0))
        draw.text((x0, y0), text, fill=colour, font=font)
    return big
