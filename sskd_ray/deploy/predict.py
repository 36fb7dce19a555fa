"""Run a trained model on images: COCO results json + PNG overlays people can look at.

A handful of images run in a plain loop here; a large input (more than `ray_above` images) goes
through the Ray Data labeling pipeline (same actors, shards, resume and error listing).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sskd_ray import storage
from sskd_ray.data.decode import decode_image
from sskd_ray.data.resize import inference_sizes, prepare_arrays, size_multiple
from sskd_ray.deploy.export import load_trained
from sskd_ray.label.sources import list_images
from sskd_ray.models.postprocess import Instance, instances_to_coco, select_instances

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


@torch.no_grad()
def predict_arrays(model, card: dict, images: list[dict], batch_size: int, threshold: float, top_k: int,
                   device: torch.device | str = "cpu"):
    """-> ([(image, array, instances)], [{"path", "reason"}] for images that could not be read).
    Images enter the model at their own aspect ratio (the card's inference sizes), on `device`."""
    short_side, max_side = inference_sizes(card)
    multiple = size_multiple(model)
    decoded, errors = [], []
    for im in images:
        try:
            array, reason = decode_image(storage.read_bytes(im["path"]), 40_000_000)
        except OSError as err:
            array, reason = None, f"cannot read: {err}"
        if array is None:
            errors.append({"path": im["path"], "reason": reason})
        else:
            decoded.append((im, array))
    done = []
    for s in range(0, len(decoded), batch_size):
        chunk = decoded[s:s + batch_size]
        batch, sizes = prepare_arrays([a for _, a in chunk], short_side, max_side, multiple, device)
        found = select_instances(model(batch, image_sizes=sizes), [a.shape[:2] for _, a in chunk], threshold,
                                 max_instances=top_k, image_sizes=sizes, input_size=tuple(batch.shape[-2:]))
        done += [(im, array, insts) for (im, array), insts in zip(chunk, found)]
    return done, errors


def predict(folder: str | Path, images: str, out: str | Path, batch_size: int = 8, threshold: float = 0.3,
            top_k: int = 20, max_overlays: int = 50, ray_above: int = 256) -> dict:
    """-> summary {images, predicted, skipped, instances, results, overlays}. `folder`, `images` and
    `out` may be local or URIs."""
    out = storage.normalize(out)
    listing = list_images(images)
    if len(listing) > ray_above:
        return _predict_with_ray(folder, listing, out, batch_size, threshold, top_k)
    model, card = load_trained(folder)
    results, overlays = [], []
    done, errors = predict_arrays(model, card, listing, batch_size, threshold, top_k)
    for im, array, insts in done:
        results += instances_to_coco(insts, im["image_id"], card["category_ids"])
        if len(overlays) < max_overlays:
            path = storage.join(out, "overlays", f"{Path(im['file_name']).stem}.png")
            png = io.BytesIO()
            draw_overlay(array, insts, card["class_names"]).save(png, format="PNG")
            overlays.append(storage.write_bytes(path, png.getvalue()))
    storage.write_text(storage.join(out, "predictions.json"), json.dumps(results))
    storage.write_json(storage.join(out, "errors.json"), errors, indent=1)
    summary = {"images": len(listing), "predicted": len(listing) - len(errors), "skipped": len(errors),
               "instances": len(results), "results": storage.join(out, "predictions.json"), "overlays": len(overlays)}
    storage.write_json(storage.join(out, "summary.json"), summary)
    return summary


def _predict_with_ray(folder, listing: list[dict], out: str, batch_size: int, threshold: float, top_k: int) -> dict:
    from dataclasses import replace

    from sskd_ray.config import LabelConfig
    from sskd_ray.label.pipeline import run_labeling
    from sskd_ray.ray_setup import init_ray

    init_ray()  # joins RAY_ADDRESS when set, else a local Ray
    folder = storage.normalize(folder)
    card = storage.read_json(storage.join(folder, "teacher.json"))
    spec = {**card, "checkpoint": storage.join(folder, "model.pt")}
    cfg = replace(LabelConfig(), score_threshold=threshold, batch_size=batch_size, top_k=top_k)
    summary = run_labeling(listing, storage.join(out, "store"), spec, f"predict:{folder}",
                           card["model"]["image_size"], cfg)
    results = storage.read_json(storage.join(out, "store", "coco_results.json"))
    storage.write_text(storage.join(out, "predictions.json"), json.dumps(results))
    return {"images": len(listing), "predicted": summary.get("images_labeled"), "skipped": summary.get("images_skipped"),
            "instances": len(results), "results": storage.join(out, "predictions.json"), "overlays": 0}
