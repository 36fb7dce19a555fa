"""Run a trained model on many images: COCO results json + PNG overlays people can look at.

A handful of images run through the model's own `predict` (models/pretrained.py); a large input
(more than `ray_above` images) goes through the Ray Data labeling pipeline (same actors, shards,
resume and error listing), which loads the model's folder in each actor.
"""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

from sskd_ray import storage
from sskd_ray.config import LabelConfig
from sskd_ray.eval.overlays import draw_overlay
from sskd_ray.label.pipeline import run_labeling
from sskd_ray.label.predictor import TeacherRef
from sskd_ray.label.sources import list_images
from sskd_ray.models.inference import read_images
from sskd_ray.models.postprocess import instances_to_coco
from sskd_ray.models.pretrained import TrainedModel
from sskd_ray.ray_setup import init_ray


def predict(model: TrainedModel, images: str, out: str | Path, batch_size: int = 8, threshold: float = 0.3,
            top_k: int = 20, max_overlays: int = 50, ray_above: int = 256) -> dict:
    """Predict every image `images` lists (a folder, glob or COCO json; local or URIs) into `out` ->
    summary {images, predicted, skipped, instances, results, overlays}."""
    out = storage.normalize(out)
    listing = list_images(images)
    if len(listing) > ray_above:
        return _predict_with_ray(model, listing, out, batch_size, threshold, top_k)
    errors: list[dict] = []
    readable = list(read_images(listing, errors=errors))
    found = model.predict([array for _, array in readable], threshold, top_k, batch_size=batch_size)
    results, overlays = [], []
    for (im, array), insts in zip(readable, found):
        results += instances_to_coco(insts, im["image_id"], model.category_ids)
        if len(overlays) < max_overlays:
            path = storage.join(out, "overlays", f"{Path(im['file_name']).stem}.png")
            png = io.BytesIO()
            draw_overlay(array, insts, model.class_names).save(png, format="PNG")
            overlays.append(storage.write_bytes(path, png.getvalue()))
    storage.write_text(storage.join(out, "predictions.json"), json.dumps(results))
    storage.write_json(storage.join(out, "errors.json"), errors, indent=1)
    summary = {"images": len(listing), "predicted": len(listing) - len(errors), "skipped": len(errors),
               "instances": len(results), "results": storage.join(out, "predictions.json"), "overlays": len(overlays)}
    storage.write_json(storage.join(out, "summary.json"), summary)
    return summary


def _predict_with_ray(model: TrainedModel, listing: list[dict], out: str, batch_size: int, threshold: float,
                      top_k: int) -> dict:
    if not model.folder:
        raise ValueError("predicting many images on Ray loads the model in each actor: load it with "
                         "from_pretrained(folder)")
    init_ray()  # joins RAY_ADDRESS when set, else a local Ray
    teacher = TeacherRef(model.card, f"predict:{model.folder}", model.folder)
    cfg = replace(LabelConfig(), score_threshold=threshold, batch_size=batch_size, top_k=top_k)
    summary = run_labeling(listing, storage.join(out, "store"), teacher, cfg)
    results = storage.read_json(storage.join(out, "store", "coco_results.json"))
    storage.write_text(storage.join(out, "predictions.json"), json.dumps(results))
    return {"images": len(listing), "predicted": summary.get("images_labeled"), "skipped": summary.get("images_skipped"),
            "instances": len(results), "results": storage.join(out, "predictions.json"), "overlays": 0}
