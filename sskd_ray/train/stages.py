"""Run one training stage on Ray Train and leave its results in its folder.

    <folder>/final/model.pt       the trained weights (state dict)
    <folder>/final/teacher.json   how to rebuild the model (what `jobs/pseudo_label.py --teacher` reads)
    <folder>/final/metrics.json   a copy of the stage's metrics, for the model card
    <folder>/metrics.json         mask AP / AP50 on the val split, iterations, wall time, skipped images
    <folder>/history.json         loss terms, lr, diagnostics and periodic AP over iterations
    <folder>/losses.png           the same as curves
    <folder>/DONE                 written last: a stage with DONE is never trained again

The folder, like the checkpoint storage, may be local or a URI (s3://, gs://; sskd_ray.storage).
Checkpoints live under `<storage>/<name>/`; re-running an interrupted stage with the same storage
resumes from its latest checkpoint (Ray Train finds the run's snapshot by name).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sskd_ray import storage, tracking
from sskd_ray.config import LossConfig, ModelConfig, StageConfig
from sskd_ray.data.pseudo_labels import duplicate_rows
from sskd_ray.eval.plots import plot_history
from sskd_ray.ray_setup import check_shared_storage
from sskd_ray.redaction import redact
from sskd_ray.train.loop import FAULT_ENV, HISTORY_FILE, METRICS_FILE, MODEL_FILE, train_loop_per_worker


@dataclass
class StageSpec:
    name: str  # unique within the run: teacher_finetune, teacher_selftrain, distill, refine, baseline
    folder: str  # a local path or a URI
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

    def loop_config(self, uri: str = "", run_id: str = "", journal: str = "") -> dict:
        return {"name": self.name, "model": dataclasses.asdict(self.model), "class_names": self.class_names,
                "category_ids": self.category_ids,
                "stage": dataclasses.asdict(self.stage), "loss": dataclasses.asdict(self.loss), "data": self.data,
                "seed": self.seed, "init": self.init, "threads": self.stage.cpus_per_worker,
                "log_every": max(1, min(10, self.stage.iterations // 20 or 1)),
                "tracking": {"uri": uri, "run_id": run_id, "journal": journal,
                             "retry_s": float(os.environ.get(tracking.RETRY_ENV, 30))}}


def is_done(folder: str) -> bool:
    return storage.is_file(storage.join(folder, "DONE"))


def read_metrics(folder: str) -> dict:
    return storage.read_json(storage.join(folder, METRICS_FILE))


def write_model_spec(folder: str, model: ModelConfig, class_names: list[str], category_ids: list[int],
                     inference: dict | None = None) -> None:
    """teacher.json: how to rebuild the model from model.pt (read by labeling, export and predict), and
    `inference` {"short_side", "max_side"}: the native-aspect input sizes it is run at."""
    spec = dataclasses.asdict(model)
    if model.kind == "maskformer":  # the weights come from model.pt: skip loading the pretrained ones first
        spec["pretrained"] = ""
    card = {"model": spec, "class_names": class_names, "category_ids": category_ids}
    if inference:
        card["inference"] = dict(inference)
    storage.write_json(storage.join(folder, "teacher.json"), card)


def check_pseudo_labels(store: str) -> dict[str, list[int]]:
    """Before a stage reads the store: a damaged shard stops it here, naming the file and the command
    that repairs the store (DamagedStoreError); rows that label an image twice are returned, to be
    skipped by every worker (each image read once)."""
    skip = duplicate_rows(store)
    if skip:
        print(redact(f"WARNING: pseudo-label store {store} holds {sum(map(len, skip.values()))} row(s) of images "
                     f"that already have a row (written before runs took the store's lease?): training reads "
                     f"each image once"), flush=True)
    return skip


def _fit(spec: StageSpec, uri: str, run_id: str, callbacks: list | None = None):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    # fault injection for tests, and the bounds of MLflow's HTTP retries (no secrets), reach the workers
    env.update({k: v for k, v in os.environ.items() if k == FAULT_ENV or k in tracking.HTTP_BOUNDS})
    storage_path = spec.storage or storage.join(storage.parent(storage.parent(spec.folder)), "ray_train")
    check_shared_storage(storage_path)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.loop_config(uri, run_id, tracking.pending_folder()),
        scaling_config=ScalingConfig(num_workers=spec.stage.num_workers, use_gpu=spec.stage.use_gpu,
                                     resources_per_worker={"CPU": spec.stage.cpus_per_worker,
                                                           **({"GPU": 1} if spec.stage.use_gpu else {})}),
        run_config=RunConfig(name=spec.name, storage_path=storage_path,
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
    folder = storage.normalize(spec.folder)
    if is_done(folder):
        print(redact(f"[{spec.name}] already done: {folder} (mask AP {read_metrics(folder).get('mask_AP')})"))
        return read_metrics(folder)
    if spec.stage.use_pseudo_labels and spec.data.get("pseudo_dir"):
        spec = dataclasses.replace(spec, data={**spec.data, "pseudo_skip": check_pseudo_labels(spec.data["pseudo_dir"])})
    tags = {"sskd.stage": spec.name, **({"sskd.parent": parent_run_id} if parent_run_id else {}), **(tags or {})}
    existing = tracking.find_run(uri, experiment, tags, run_dir=folder)
    start = time.perf_counter()
    with tracking.start_run(uri, experiment, spec.name, parent_id=parent_run_id, run_id=existing, tags=tags,
                            run_dir=folder) as run_id:
        tracking.log_params(uri, run_id, {**spec.params, **{f"stage.{k}": v for k, v in
                                                             dataclasses.asdict(spec.stage).items()},
                                          "stage.init": spec.init or spec.model.pretrained})
        result = _fit(spec, uri, run_id, callbacks)
        if result.error:
            raise RuntimeError(f"stage {spec.name} failed: {result.error}")
        final = storage.join(folder, "final")
        storage.remove(final)
        with result.checkpoint.as_directory() as ckpt:  # downloaded when the storage is remote
            storage.copy_tree(Path(ckpt) / MODEL_FILE, storage.join(final, MODEL_FILE))
            history = json.loads((Path(ckpt) / HISTORY_FILE).read_text())
            metrics = json.loads((Path(ckpt) / METRICS_FILE).read_text())
        write_model_spec(final, spec.model, spec.class_names, spec.category_ids, spec.data.get("inference"))
        metrics.update({"stage": spec.name, "wall_seconds": round(time.perf_counter() - start, 1),
                        "resumes": sum(1 for row in history if row.get("event") == "resumed")})
        storage.write_json(storage.join(folder, METRICS_FILE), metrics)
        storage.write_json(storage.join(final, METRICS_FILE), metrics)  # travels with the weights (model card)
        storage.write_json(storage.join(folder, HISTORY_FILE), history, indent=None)
        plot = plot_history(history, storage.join(folder, "losses.png"), title=spec.name)
        tracking.log_metrics(uri, run_id, {k: v for k, v in metrics.items() if k.startswith("mask_")},
                             step=metrics.get("iterations"))
        tracking.log_artifacts(uri, run_id, [storage.join(folder, METRICS_FILE), plot,
                                             storage.join(final, "teacher.json")])
    storage.write_text(storage.join(folder, "DONE"), time.strftime("%Y-%m-%d %H:%M:%S\n"))
    print(redact(f"[{spec.name}] done in {metrics['wall_seconds']} s: mask AP {metrics.get('mask_AP')}, "
                 f"AP50 {metrics.get('mask_AP50')} -> {final}"))
    return metrics
