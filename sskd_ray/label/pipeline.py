"""Pseudo-labeling with Ray Data: shards of image paths -> actor pool of teachers -> Parquet store.

Resume is a deterministic shard manifest: shard names derive from their member paths, a shard's
Parquet file appears atomically when it is done, and a re-run with the same `out` only sends the
shards without a file. `out/teacher.json` pins the teacher identity; another teacher is refused.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import ray

from sskd_ray import storage
from sskd_ray.config import LabelConfig
from sskd_ray.data.pseudo_labels import export_coco_results, read_store
from sskd_ray.label.predictor import TeacherPredictor
from sskd_ray.label.sources import plan_shards


class TeacherMismatchError(RuntimeError):
    """`out` already holds labels from a different teacher."""


def claim_output(out: str, teacher_id: str) -> None:
    marker = storage.join(out, "teacher.json")
    if storage.is_file(marker):
        existing = storage.read_json(marker)["teacher"]
        if existing != teacher_id:
            raise TeacherMismatchError(
                f"{out} holds pseudo-labels from teacher '{existing}', not '{teacher_id}': "
                f"use another --out, or delete {out} to relabel with the new teacher")
    else:
        storage.write_json(marker, {"teacher": teacher_id}, indent=None)


def check_gpus(num_gpus_per_actor: float, num_actors: int) -> None:
    """Ray waits forever for GPUs it does not have: fail now, saying what is there."""
    if num_gpus_per_actor <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0)
    need = num_gpus_per_actor * num_actors
    if have < need:
        raise RuntimeError(f"labeling asks for {need:g} GPU(s) ({num_actors} actors x {num_gpus_per_actor:g}) "
                           f"but the Ray cluster has {have:g}; set label.num_gpus_per_actor=0 for CPU")


def run_labeling(images: list[dict], out: str | Path, teacher_spec: dict, teacher_id: str, image_size: int,
                 cfg: LabelConfig) -> dict:
    """Label `images` into `out` (a folder or URI); returns the summary (also out/summary.json)."""
    out = storage.normalize(out)
    claim_output(out, teacher_id)
    shards = plan_shards(images, cfg.images_per_shard)
    done = {storage.name(p) for p in storage.list_files(out, "shard-*.parquet")}
    pending = [s for s in shards if f"{s['shard']}.parquet" not in done]
    check_gpus(cfg.num_gpus_per_actor, cfg.num_actors)
    start = time.perf_counter()
    if pending:
        ds = ray.data.from_items([{"shard": s["shard"], "images": json.dumps(s["images"])} for s in pending],
                                 override_num_blocks=len(pending))
        pool = ray.data.ActorPoolStrategy(min_size=cfg.num_actors, max_size=max(cfg.max_actors, cfg.num_actors))
        ds = ds.map_batches(
            TeacherPredictor, batch_size=1, compute=pool,
            fn_constructor_kwargs=dict(spec=teacher_spec, out_dir=out, teacher_id=teacher_id,
                                       image_size=image_size, score_threshold=cfg.score_threshold, top_k=cfg.top_k,
                                       batch_size=cfg.batch_size, max_pixels=cfg.max_image_pixels,
                                       torch_threads=cfg.torch_threads),
            num_cpus=cfg.num_cpus_per_actor, num_gpus=cfg.num_gpus_per_actor or None)
        ds.take_all()  # results are on disk; the returned rows are only per-shard counts
    return summarise(out, [s["shard"] for s in shards], len(images), time.perf_counter() - start, len(pending))


def summarise(out: str, shard_names: list[str], num_images: int, seconds: float, shards_run: int) -> dict:
    errors = []
    written = set(storage.list_files(storage.join(out, "errors"), "*.json"))
    for name in shard_names:
        path = storage.join(out, "errors", f"{name}.json")
        if path in written:
            errors += storage.read_json(path)
    storage.write_text(storage.join(out, "errors.jsonl"), "".join(json.dumps(e) + "\n" for e in errors))
    table = read_store(out)
    per_class: dict[int, int] = {}
    scores = []
    for insts in table.column("instances").to_pylist():
        for inst in insts:
            per_class[inst["category_id"]] = per_class.get(inst["category_id"], 0) + 1
            scores.append(inst["score"])
    hist, edges = np.histogram(scores, bins=10, range=(0.0, 1.0))
    summary = {"images_seen": num_images, "images_labeled": table.num_rows, "images_skipped": len(errors),
               "instances": len(scores), "instances_per_class": {str(k): v for k, v in sorted(per_class.items())},
               "score_histogram": {"edges": edges.round(2).tolist(), "counts": hist.tolist()},
               "shards_run": shards_run, "seconds": seconds,
               "images_per_second": (table.num_rows / seconds) if shards_run and seconds > 0 else None}
    storage.write_json(storage.join(out, "summary.json"), summary)
    export_coco_results(out, storage.join(out, "coco_results.json"))
    return summary
