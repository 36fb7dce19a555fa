"""Pseudo-labeling with Ray Data: pending shards of the pool's manifest -> actor pool of teachers ->
Parquet store.

Resume is by image key (pseudo_labels.py): a run labels the manifest's images whose key is not in
the store yet, cut into shards named after this run and their members (manifest.py), so a grown pool
labels only its new images and another shard size never relabels anything. A shard's Parquet file
appears atomically when it is done, so a killed run leaves whole shards, and its unfinished images
are still pending next time. `out/teacher.json` pins the teacher identity; another teacher is refused.
A run holds the store's lease (lease.py) from planning to summary, so two runs never label the same
image; a shard that cannot be read is set aside and its images are labeled again.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow.parquet as pq
import ray

from sskd_ray import storage
from sskd_ray.config import LabelConfig
from sskd_ray.data.pseudo_labels import DAMAGED_DIR, DamagedStoreError, export_coco_results, set_aside, shard_paths
from sskd_ray.label.lease import hold_store
from sskd_ray.label.manifest import count_in_store, new_run_id, plan_pending, write_manifest
from sskd_ray.label.predictor import TeacherPredictor
from sskd_ray.redaction import redact

WINDOW_SHARDS = 1024  # pending shards planned at a time: the driver's heap never holds the whole plan


class TeacherMismatchError(RuntimeError):
    """`out` already holds labels from a different teacher."""


def claim_output(out: str, teacher_id: str, source: str = "") -> None:
    """Pin the store to `teacher_id`; `source` (how jobs/pseudo_label.py names that teacher, e.g.
    "--teacher builtin --smoke") is kept for the command that repairs the store."""
    marker = storage.join(out, "teacher.json")
    if storage.is_file(marker):
        existing = storage.read_json(marker)["teacher"]
        if existing != teacher_id:
            raise TeacherMismatchError(
                f"{out} holds pseudo-labels from teacher '{existing}', not '{teacher_id}': "
                f"use another --out, or delete {out} to relabel with the new teacher")
    else:
        storage.write_json(marker, {"teacher": teacher_id, **({"source": redact(source)} if source else {})},
                           indent=None)


def check_gpus(num_gpus_per_actor: float, num_actors: int) -> None:
    """Ray waits forever for GPUs it does not have: fail now, saying what is there."""
    if num_gpus_per_actor <= 0:
        return
    have = ray.cluster_resources().get("GPU", 0)
    need = num_gpus_per_actor * num_actors
    if have < need:
        raise RuntimeError(f"labeling asks for {need:g} GPU(s) ({num_actors} actors x {num_gpus_per_actor:g}) "
                           f"but the Ray cluster has {have:g}; set label.num_gpus_per_actor=0 for CPU")


def run_labeling(images: str | Iterable[dict], out: str | Path, teacher_spec: dict, teacher_id: str,
                 image_size: int, cfg: LabelConfig, source: str = "") -> dict:
    """Label the images of a manifest (its location) or of image dicts (written to out/manifest.parquet)
    that `out` (a folder or URI) does not hold yet; returns the summary (also out/summary.json).
    Holds the store's lease throughout (one run at a time); damaged shards are set aside and their
    images labeled again."""
    out = storage.normalize(out)
    with hold_store(out, cfg.lease_seconds, cfg.lease_wait_seconds) as lease:
        claim_output(out, teacher_id, source)
        manifest = images if isinstance(images, str) else write_manifest(images, out)
        check_gpus(cfg.num_gpus_per_actor, cfg.num_actors)
        run_id = new_run_id()
        start = time.perf_counter()
        try:
            shard_names, pending, windows = _plan(manifest, out, cfg.images_per_shard, run_id)
            damaged = []
        except DamagedStoreError as err:  # set the unreadable shards aside; their images are pending again
            damaged = set_aside(out, err.damaged)
            print(redact(f"WARNING: pseudo-label store {out}: {len(damaged)} damaged shard(s) set aside in "
                         f"{storage.join(out, DAMAGED_DIR)} and their images labeled again: "
                         + "; ".join(f"{d['shard']} ({d['reason']})" for d in damaged)), flush=True)
            shard_names, pending, windows = _plan(manifest, out, cfg.images_per_shard, run_id)
        opened = time.time()  # wall clock: compared with the actors' (one node: exact)
        rows = _label_shards(windows, len(shard_names), out, teacher_spec, teacher_id, image_size, cfg, lease.path)
        actor_start = max(0.0, float(min(r["started"] for r in rows)) - opened) if rows else 0.0
        return summarise(out, manifest, {"id": run_id, "shards": shard_names, "images_pending": pending,
                                         "seconds": time.perf_counter() - start, "actor_start_seconds": actor_start,
                                         "actor_processes": len({r["worker"] for r in rows}),
                                         "damaged_shards": damaged})


def _plan(manifest: str, out: str, per_shard: int, run_id: str) -> tuple[list[str], int, list[ray.data.Dataset]]:
    """The pending shards, a window of WINDOW_SHARDS at a time: (names, images, one dataset per window)."""
    plan = plan_pending(manifest, out, per_shard, run_id)
    shard_names, pending, windows = [], 0, []
    while window := list(itertools.islice(plan, WINDOW_SHARDS)):
        shard_names += [s["shard"] for s in window]
        pending += sum(len(s["images"]) for s in window)
        windows.append(_window_dataset(window))
    return shard_names, pending, windows


def _window_dataset(shards: list[dict]) -> ray.data.Dataset:
    """One block per shard (so the actors share a window shard by shard), stored in Ray's object
    store, not in the driver's heap."""
    return ray.data.from_items([{"shard": s["shard"], "images": json.dumps(s["images"])} for s in shards],
                               override_num_blocks=len(shards))


def _label_shards(windows: list[ray.data.Dataset], num_shards: int, out: str, teacher_spec: dict, teacher_id: str,
                  image_size: int, cfg: LabelConfig, lease: str = "") -> list[dict]:
    """Label every window through ONE actor pool: an actor is a fresh Python process (Ray never hands
    an actor an idle or prestarted worker) that imports torch and the model code and builds the
    teacher (3-4 s on 2 CPUs, far more for a large teacher on a GPU): that is the run's
    `actor_start_seconds`, and a pool per window would pay it again every WINDOW_SHARDS shards.
    Returns the per-shard rows (counts, times, the actor's pid); the labels themselves are on disk."""
    if not windows:
        return []
    ds = windows[0].union(*windows[1:]) if len(windows) > 1 else windows[0]
    pool = ray.data.ActorPoolStrategy(min_size=min(cfg.num_actors, num_shards),
                                      max_size=max(cfg.max_actors, cfg.num_actors))
    ds = ds.map_batches(
        TeacherPredictor, batch_size=1, compute=pool,
        fn_constructor_kwargs=dict(spec=teacher_spec, out_dir=out, teacher_id=teacher_id,
                                   image_size=image_size, score_threshold=cfg.score_threshold, top_k=cfg.top_k,
                                   batch_size=cfg.batch_size, max_pixels=cfg.max_image_pixels,
                                   torch_threads=cfg.torch_threads, nms_iou=cfg.nms_iou, lease=lease),
        num_cpus=cfg.num_cpus_per_actor, num_gpus=cfg.num_gpus_per_actor or None)
    return ds.take_all()


def _store_statistics(out: str) -> dict:
    """Instances per class and the score histogram, one shard (two nested columns) at a time."""
    per_class: dict[int, int] = {}
    hist = np.zeros(10, dtype=np.int64)
    for path in shard_paths(out):
        fs, inner = storage.filesystem(path)
        for insts in pq.read_table(inner, columns=["instances"], filesystem=fs).column(0).to_pylist():
            for inst in insts:
                per_class[inst["category_id"]] = per_class.get(inst["category_id"], 0) + 1
            hist += np.histogram([i["score"] for i in insts], bins=10, range=(0.0, 1.0))[0]
    edges = np.linspace(0.0, 1.0, 11)
    return {"instances": int(hist.sum()), "instances_per_class": {str(k): v for k, v in sorted(per_class.items())},
            "score_histogram": {"edges": edges.round(2).tolist(), "counts": hist.tolist()}}


def summarise(out: str, manifest: str, run: dict) -> dict:
    """out/summary.json: the pool against the store in total, and this run's counts (kept per run)."""
    errors, names = [], run.pop("shards")
    run["shards"] = len(names)
    for name in names:
        path = storage.join(out, "errors", f"{name}.json")
        if storage.is_file(path):
            errors += storage.read_json(path)
    storage.write_text(storage.join(out, "errors.jsonl"), "".join(json.dumps(redact(e)) + "\n" for e in errors))
    counts = count_in_store(manifest, out)
    labeled_now = run["images_pending"] - len(errors)
    run.update(images_labeled=labeled_now, images_skipped=len(errors),
               images_per_second=labeled_now / run["seconds"] if labeled_now and run["seconds"] > 0 else None)
    problems = []
    if counts["duplicate_rows"]:
        problems.append(f"{counts['duplicate_rows']} row(s) label an image that already has a row (duplicate keys)")
    if counts["rows_outside_pool"]:
        problems.append(f"{counts['rows_outside_pool']} image(s) in the store are not in this pool "
                        f"(the pool shrank, or --out is shared with another pool)")
    if problems:
        print(f"WARNING: pseudo-label store {redact(out)}: " + "; ".join(problems))
    earlier = storage.join(out, "summary.json")
    runs = storage.read_json(earlier).get("runs", []) if storage.is_file(earlier) else []
    summary = {"images_seen": counts["pool"], "images_labeled": counts["labeled"], "images_skipped": len(errors),
               "images_missing": counts["pool"] - counts["labeled"], "store_rows": counts["rows"],
               **_store_statistics(out), "shards_run": run["shards"], "seconds": run["seconds"], "images_per_second": run["images_per_second"],
               "run": run, "runs": runs + [run], "problems": problems}
    storage.write_json(earlier, redact(summary))
    export_coco_results(out, storage.join(out, "coco_results.json"))
    return summary
