"""One pseudo-labeling pass as users run it: resolve the teacher, label, measure quality, log.

Quality (`summary.json` "quality", MLflow `quality_*`) is measured when the listing is a COCO json
with annotations: precision / recall / mask AP against them (sskd_ray.eval.pseudo_quality).

A teacher is `builtin` (the configured built-in teacher with its shipped ImageNet weights, no
adaptation) or a checkpoint directory holding `model.pt` (a state dict) and `teacher.json`
({"model": ModelConfig fields, "class_names": [...], "category_ids": [...]}).
"""
from __future__ import annotations

import dataclasses
import hashlib

from sskd_ray import storage, tracking
from sskd_ray.config import Config, config_digest, flatten_config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.eval.pseudo_quality import pseudo_label_quality
from sskd_ray.label.lease import hold_store
from sskd_ray.label.pipeline import run_labeling
from sskd_ray.label.manifest import manifest_location, write_manifest
from sskd_ray.models.build import tiny_model_config
from sskd_ray.redaction import redact


def resolve_teacher(cfg: Config, teacher: str, smoke: bool) -> tuple[dict, str, int]:
    """-> (teacher spec for the actors, teacher identity, input size)."""
    if teacher == "builtin":
        model = tiny_model_config(cfg.teacher) if smoke else cfg.teacher
        spec = {"model": dataclasses.asdict(model), "class_names": list(CLASS_NAMES),
                "category_ids": list(range(1, len(CLASS_NAMES) + 1)), "checkpoint": ""}
        weights = "random" if smoke or model.pretrained in ("", "random") else model.pretrained
        return spec, f"builtin:{model.encoder}:{weights}@{config_digest(model)}", model.image_size
    folder = storage.normalize(teacher)
    spec_file, weights_file = storage.join(folder, "teacher.json"), storage.join(folder, "model.pt")
    if not storage.is_file(spec_file) or not storage.is_file(weights_file):
        raise FileNotFoundError(f"teacher checkpoint '{teacher}' needs teacher.json and model.pt (or use 'builtin')")
    spec = storage.read_json(spec_file)
    spec["checkpoint"] = weights_file
    digest = hashlib.sha256(storage.read_bytes(weights_file)).hexdigest()[:12]
    size = spec["model"].get("image_size", cfg.teacher.image_size)
    if smoke:
        size = min(size, 64)
    return spec, f"{storage.name(folder)}:{spec['model'].get('encoder', spec['model'].get('kind'))}@{digest}", size


def plot_scores(summary: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = summary["score_histogram"]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=120)
    ax.bar(hist["edges"][:-1], hist["counts"], width=0.1, align="edge", color="#4c72b0", edgecolor="white")
    ax.set_xlabel("instance score")
    ax.set_ylabel("instances")
    ax.set_title(f"pseudo-label scores ({summary['instances']} instances, {summary['images_labeled']} images)")
    fig.tight_layout()
    with storage.local_output(path) as local:
        fig.savefig(local)
    plt.close(fig)
    return path


def label_pool(cfg: Config, images: str, teacher: str, out: str, smoke: bool = False,
               parent_run_id: str | None = None, reuse_manifest: bool = False) -> dict:
    """Label the images `images` lists (folder, glob, COCO json, Parquet/CSV manifest; local or URI)
    into the store `out` with `teacher` ('builtin' or a stage's final/ folder); logs one MLflow run.
    The listing is streamed into out/manifest.parquet; `reuse_manifest` plans from the one an earlier
    run wrote instead of listing again (a huge bucket that did not change)."""
    from sskd_ray.ray_setup import check_shared_storage

    out = storage.normalize(out)
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri, out)  # fails now, not after labeling, if there is none
    check_shared_storage(out)  # labeling actors on every node write their shards here
    spec, teacher_id, size = resolve_teacher(cfg, teacher, smoke)
    with hold_store(out, cfg.label.lease_seconds, cfg.label.lease_wait_seconds):  # one run at a time (lease.py)
        manifest = manifest_location(out)
        if not (reuse_manifest and storage.is_file(manifest)):
            manifest = write_manifest(images, manifest)
        summary = run_labeling(manifest, out, spec, teacher_id, size, cfg.label,
                               source=f"--teacher {teacher}" + (" --smoke" if smoke else ""))
        summary["teacher"] = teacher_id
        if images.endswith(".json") and storage.read_json(images).get("annotations"):
            results = storage.read_json(storage.join(out, "coco_results.json"))
            summary["quality"] = pseudo_label_quality(images, results)  # the pool's ground truth, never trained on
        storage.write_json(storage.join(out, "summary.json"), redact(summary))
        plot = plot_scores(summary, storage.join(out, "scores.png"))
    with tracking.start_run(uri, cfg.tracking.experiment, "pseudo_label", parent_id=parent_run_id,
                            tags={"sskd.stage": "pseudo_label"}, run_dir=out) as run_id:
        tracking.log_params(uri, run_id, {**flatten_config(cfg), "teacher_id": teacher_id, "images": images})
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
        metrics.update({f"quality_{k}": v for k, v in summary.get("quality", {}).items() if v is not None})
        tracking.log_metrics(uri, run_id, metrics)
        tracking.log_artifacts(uri, run_id, [storage.join(out, "summary.json"), storage.join(out, "errors.jsonl"), plot])
    return summary
