"""One pseudo-labeling pass as users run it: resolve the teacher, label, measure quality, log.

A teacher is `builtin` (the configured built-in teacher with its shipped ImageNet weights, no
adaptation) or a checkpoint directory holding `model.pt` (a state dict) and `teacher.json`
({"model": ModelConfig fields, "class_names": [...], "category_ids": [...]}).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from sskd_ray import tracking
from sskd_ray.config import Config, config_digest, flatten_config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.label.pipeline import run_labeling
from sskd_ray.label.sources import list_images
from sskd_ray.models.build import tiny_model_config


def resolve_teacher(cfg: Config, teacher: str, smoke: bool) -> tuple[dict, str, int]:
    """-> (teacher spec for the actors, teacher identity, input size)."""
    if teacher == "builtin":
        model = tiny_model_config(cfg.teacher) if smoke else cfg.teacher
        spec = {"model": dataclasses.asdict(model), "class_names": list(CLASS_NAMES),
                "category_ids": list(range(1, len(CLASS_NAMES) + 1)), "checkpoint": ""}
        weights = "random" if smoke or model.pretrained in ("", "random") else model.pretrained
        return spec, f"builtin:{model.encoder}:{weights}@{config_digest(model)}", model.image_size
    folder = Path(teacher)
    if not (folder / "teacher.json").is_file() or not (folder / "model.pt").is_file():
        raise FileNotFoundError(f"teacher checkpoint '{teacher}' needs teacher.json and model.pt (or use 'builtin')")
    spec = json.loads((folder / "teacher.json").read_text())
    spec["checkpoint"] = str(folder / "model.pt")
    digest = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()[:12]
    size = spec["model"].get("image_size", cfg.teacher.image_size)
    if smoke:
        size = min(size, 64)
    return spec, f"{folder.name}:{spec['model'].get('encoder', spec['model'].get('kind'))}@{digest}", size


def plot_scores(summary: dict, path: Path) -> Path:
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
    fig.savefig(path)
    plt.close(fig)
    return path


def label_pool(cfg: Config, images: str, teacher: str, out: str | Path, smoke: bool = False,
               parent_run_id: str | None = None) -> dict:
    from sskd_ray.eval import evaluate_masks

    out = Path(out)
    spec, teacher_id, size = resolve_teacher(cfg, teacher, smoke)
    listing = list_images(images)
    summary = run_labeling(listing, out, spec, teacher_id, size, cfg.label)
    summary["teacher"] = teacher_id
    if images.endswith(".json") and json.loads(Path(images).read_text()).get("annotations"):
        results = json.loads((out / "coco_results.json").read_text())
        quality = evaluate_masks(images, results)
        summary["quality"] = {k: quality[k] for k in ("mask_AP", "mask_AP50")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot = plot_scores(summary, out / "scores.png")
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri, out)
    with tracking.start_run(uri, cfg.tracking.experiment, "pseudo_label", parent_id=parent_run_id,
                            tags={"sskd.stage": "pseudo_label"}, run_dir=out) as run_id:
        tracking.log_params(uri, run_id, {**flatten_config(cfg), "teacher_id": teacher_id, "images": images})
        metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
        metrics.update({f"quality_{k}": v for k, v in summary.get("quality", {}).items()})
        tracking.log_metrics(uri, run_id, metrics)
        tracking.log_artifacts(uri, run_id, [out / "summary.json", out / "errors.jsonl", plot])
    return summary
