"""Run one training stage on Ray Train and leave its results in its folder.

    <folder>/final/model.pt       the trained weights (state dict)
    <folder>/final/teacher.json   how to rebuild the model (what `jobs/pseudo_label.py --teacher` reads)
    <folder>/final/metrics.json   a copy of the stage's metrics, for the model card
    <folder>/metrics.json         mask AP / AP50 on the val split, iterations, wall time, skipped images
    <folder>/history.json         loss terms, lr, diagnostics and periodic AP over iterations
    <folder>/losses.png           the same as curves
    <folder>/DONE                 written last: a stage with DONE is never trained again

Checkpoints live under `<storage>/<name>/`; re-running an interrupted stage with the same storage
resumes from its latest checkpoint (Ray Train finds the run's snapshot by name).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sskd_ray import tracking
from sskd_ray.config import LossConfig, ModelConfig, StageConfig
from sskd_ray.eval.plots import plot_history
from sskd_ray.train.loop import FAULT_ENV, HISTORY_FILE, METRICS_FILE, MODEL_FILE, train_loop_per_worker


@dataclass
class StageSpec:
    name: str  # unique within the run: teacher_finetune, teacher_selftrain, distill, refine, baseline
    folder: Path
    model: ModelConfig
    stage: StageConfig
    loss: LossConfig
    data: dict  # labeled_json, labeled_images, val_json, val_images, image_size, [pseudo_dir, pseudo_images, ...]
    class_names: list[str]
    category_ids: list[int]
    seed: int = 0
    init: str = ""  # a state dict to start from ("" = the model config's pretrained weights)
    storage: str = ""  # Ray Train storage_path (local dir or URI); default <folder>/../../ray_train
    params: dict = field(default_factory=dict)  # extra MLflow params (the resolved flat config)

    def loop_config(self, uri: str = "", run_id: str = "") -> dict:
        return {"name": self.name, "model": dataclasses.asdict(self.model), "class_names": self.class_names,
                "stage": dataclasses.asdict(self.stage), "loss": dataclasses.asdict(self.loss), "data": self.data,
                "seed": self.seed, "init": self.init, "threads": self.stage.cpus_per_worker,
                "log_every": max(1, min(10, self.stage.iterations // 20 or 1)),
                "tracking": {"uri": uri, "run_id": run_id}}


def is_done(folder: Path) -> bool:
    return (Path(folder) / "DONE").is_file()


def read_metrics(folder: Path) -> dict:
    return json.loads((Path(folder) / METRICS_FILE).read_text())


def write_model_spec(folder: Path, model: ModelConfig, class_names: list[str], category_ids: list[int]) -> None:
    """teacher.json: how to rebuild the model from model.pt (read by labeling, export and predict)."""
    spec = dataclasses.asdict(model)
    if model.kind == "maskformer":  # the weights come from model.pt: skip loading the pretrained ones first
        spec["pretrained"] = ""
    (folder / "teacher.json").write_text(json.dumps({"model": spec, "class_names": class_names,
                                                     "category_ids": category_ids}, indent=2))


def check_shared_storage(storage: str) -> None:
    """On a cluster of several nodes, Ray Train's storage must be visible from every node: write a
    marker here and look for it from a task pinned to each node. URIs (s3://, gs://) pass as is."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if "://" in storage or len(nodes) <= 1:
        return
    marker = Path(storage) / f".shared-check-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("sskd-ray\n")

    @ray.remote(num_cpus=0)
    def visible(path: str) -> bool:
        return Path(path).exists()

    try:
        seen = ray.get([visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(marker)) for n in nodes])
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise RuntimeError(f"storage path {storage} is not visible from node(s) {blind}: on a multi-node cluster "
                           f"use a shared file system (EFS/NFS mounted on every node) or an s3:// / gs:// URI")


def _fit(spec: StageSpec, uri: str, run_id: str, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if os.environ.get(FAULT_ENV):  # fault injection for tests reaches the workers through their env
        env[FAULT_ENV] = os.environ[FAULT_ENV]
    storage = spec.storage or str((Path(spec.folder).parent.parent / "ray_train").resolve())
    check_shared_storage(storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.loop_config(uri, run_id),
        scaling_config=ScalingConfig(num_workers=spec.stage.num_workers, use_gpu=spec.stage.use_gpu,
                                     resources_per_worker={"CPU": spec.stage.cpus_per_worker,
                                                           **({"GPU": 1} if spec.stage.use_gpu else {})}),
        run_config=RunConfig(name=spec.name, storage_path=storage,
                             failure_config=FailureConfig(max_failures=spec.stage.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks,
                             # plain prints from workers: Train's print patch logs each line twice and
                             # ignores redirect_stdout (pycocotools' chatter)
                             worker_runtime_env={"env_vars": env}))
    return trainer.fit()


def run_stage(spec: StageSpec, uri: str, experiment: str, parent_run_id: str | None = None,
              tags: dict | None = None, callbacks: list | None = None) -> dict:
    """Train (or resume, or skip when DONE) one stage; returns its metrics. `tags` mark its MLflow
    run (a sweep adds the trial), `callbacks` go to Ray Train (Tune's TuneReportCallback)."""
    folder = Path(spec.folder)
    if is_done(folder):
        print(f"[{spec.name}] already done: {folder} (mask AP {read_metrics(folder).get('mask_AP')})")
        return read_metrics(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tags = {"sskd.stage": spec.name, **({"sskd.parent": parent_run_id} if parent_run_id else {}), **(tags or {})}
    existing = tracking.find_run(uri, experiment, tags)
    start = time.perf_counter()
    with tracking.start_run(uri, experiment, spec.name, parent_id=parent_run_id, run_id=existing, tags=tags,
                            run_dir=folder) as run_id:
        tracking.log_params(uri, run_id, {**spec.params, **{f"stage.{k}": v for k, v in
                                                             dataclasses.asdict(spec.stage).items()},
                                          "stage.init": spec.init or spec.model.pretrained})
        result = _fit(spec, uri, run_id, callbacks)
        if result.error:
            raise RuntimeError(f"stage {spec.name} failed: {result.error}")
        final = folder / "final"
        if final.exists():
            shutil.rmtree(final)
        with result.checkpoint.as_directory() as ckpt:
            final.mkdir(parents=True)
            shutil.copy(Path(ckpt) / MODEL_FILE, final / MODEL_FILE)
            history = json.loads((Path(ckpt) / HISTORY_FILE).read_text())
            metrics = json.loads((Path(ckpt) / METRICS_FILE).read_text())
        write_model_spec(final, spec.model, spec.class_names, spec.category_ids)
        metrics.update({"stage": spec.name, "wall_seconds": round(time.perf_counter() - start, 1),
                        "resumes": sum(1 for row in history if row.get("event") == "resumed")})
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        (final / METRICS_FILE).write_text(json.dumps(metrics, indent=2))  # travels with the weights (model card)
        (folder / HISTORY_FILE).write_text(json.dumps(history))
        plot = plot_history(history, folder / "losses.png", title=spec.name)
        tracking.log_metrics(uri, run_id, {k: v for k, v in metrics.items() if k.startswith("mask_")},
                             step=metrics.get("iterations"))
        tracking.log_artifacts(uri, run_id, [folder / METRICS_FILE, plot, final / "teacher.json"])
    (folder / "DONE").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    print(f"[{spec.name}] done in {metrics['wall_seconds']} s: mask AP {metrics.get('mask_AP')}, "
          f"AP50 {metrics.get('mask_AP50')} -> {final}")
    return metrics
