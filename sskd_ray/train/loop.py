"""The one training loop every stage runs inside Ray Train workers (`train_loop_per_worker`).

A stage arrives as its typed `StageSpec` (train/stage_spec.py): which model and start weights, which loss
terms, the optimiser and schedule, the data. Progress is counted in iterations stored inside
each checkpoint, so a restarted worker group continues where the last registered checkpoint left
off and sees the same batches it would have seen (they are drawn from (seed, iteration)).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from sskd_ray import tracking as mlflow_tracking
from sskd_ray.config import LossConfig, StageConfig
from sskd_ray.data.image_cache import enable_image_cache
from sskd_ray.eval.distributed import evaluate_distributed
from sskd_ray.models.build import build_model
from sskd_ray.models.checkpoint import ModelCard, read_weights, save_trained
from sskd_ray.models.freeze import apply_freeze, param_groups
from sskd_ray.models.maskformer import use_channels_last
from sskd_ray.train.data import ViewSizes, build_training_set, draw_batch
from sskd_ray.train.objective import Objective
from sskd_ray.train.prefetch import BatchPrefetcher
from sskd_ray.train.stage_spec import StageSpec

STATE_FILE, METRICS_FILE, HISTORY_FILE = "state.pt", "metrics.json", "history.json"
FAULT_ENV = "SSKD_FAULT_AT_ITERATION"  # tests: "N:marker-path" makes one worker die once at iteration N


def lr_factor(schedule: str, iteration: int, total: int) -> float:
    """poly (power 0.9) or multi-step (x0.1 at 90 % and again at 95 % of the run), as in Table 7."""
    if total <= 0:
        return 1.0
    if schedule == "poly":
        return (1 - iteration / total) ** 0.9
    return 0.1 ** ((iteration >= 0.9 * total) + (iteration >= 0.95 * total))


def log_interval(stage: StageConfig) -> int:
    """Iterations per logged row: `stage.log_every`, or about 20 rows a stage (every 1 to 10 iterations)."""
    return stage.log_every or max(1, min(10, stage.iterations // 20 or 1))


def build_stage_model(spec: StageSpec) -> torch.nn.Module:
    """The stage's model: built from its config (pretrained weights as configured), then the trained
    model it continues, if any (refinement starts from the distilled student)."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, spec.class_names)
    if spec.init:
        model.load_state_dict(read_weights(spec.init))
    if spec.model.freeze:
        apply_freeze(model, spec.model.freeze)
    return model


def prepare_step(model: torch.nn.Module, loss_cfg: LossConfig, stage: StageConfig,
                 device: torch.device) -> tuple[torch.nn.Module, Objective, torch.optim.Optimizer]:
    """The model on `device`, its objective and its optimizer, as every training step uses them:
    a CNN student in channels-last memory on CPU (`use_channels_last`), AdamW over `param_groups` with
    the fused kernel (one op for all parameters instead of a dozen small ones per parameter tensor,
    which on the demo's CPU step cost more than the update itself)."""
    model = model.to(device)
    if device.type == "cpu":
        use_channels_last(model)
    objective = Objective(model, loss_cfg, stage.use_pseudo_labels, stage.use_contrastive)
    groups = param_groups(model, stage.lr, stage.backbone_lr_mult, stage.weight_decay)
    optimizer = torch.optim.AdamW(groups, fused=all(p.is_floating_point() for g in groups for p in g["params"]))
    return model, objective, optimizer


def _maybe_fail(iteration: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if iteration == int(at) and not Path(marker).exists():
        Path(marker).write_text(f"worker pid {os.getpid()} died at iteration {iteration}\n")
        os._exit(1)  # a hard crash: no cleanup, no report


def _reduce_mean(values: list[float], world: int, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
        t /= world
    return t.tolist()


def _save(model: torch.nn.Module, card: ModelCard, optimizer, iteration: int, history: list, skipped: dict,
          metrics: dict | None) -> str:
    """A Ray Train checkpoint: the trained model's folder (config.json + model.safetensors), plus the
    optimizer state and the iteration to resume from."""
    folder = tempfile.mkdtemp(prefix="sskd-ckpt-")
    save_trained(folder, model, card)
    torch.save({"optimizer": optimizer.state_dict(), "iteration": iteration, "skipped": skipped},
               Path(folder) / STATE_FILE)
    (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
    if metrics is not None:
        (Path(folder) / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return folder


def _evaluate(model: torch.nn.Module, spec: StageSpec, device: torch.device, rank: int = 0, world: int = 1,
              split: str = "val") -> dict:
    """Every rank predicts its share of the `split` ("val" or "test") split (a collective: all ranks call
    this together); rank 0 gets the mask metrics, the others {}."""
    sizes = spec.inference
    json_path, images = ((spec.inputs.test_json, spec.inputs.test_images) if split == "test"
                         else (spec.inputs.val_json, spec.inputs.val_images))
    metrics, _ = evaluate_distributed(model, json_path, images, sizes.short_side, rank, world, device=device,
                                      max_side=sizes.max_side, category_ids=spec.category_ids)
    return {k: v for k, v in (metrics or {}).items() if k.startswith("mask_")}


def train_loop_per_worker(config: dict) -> None:
    """config: {"spec": StageSpec, "card": the ModelCard to save with,
    "tracking": {"uri", "run_id", "journal", "retry_s"} (tracking.metric_sender; run_id "" = no tracking)}."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec: StageSpec = config["spec"]
    stage, inputs = spec.stage, spec.inputs
    torch.set_num_threads(stage.cpus_per_worker)
    device = ray.train.torch.get_device()
    model, objective, optimizer = prepare_step(build_stage_model(spec), spec.loss, stage, device)
    start, history, skipped = 0, [], {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(read_weights(folder))
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            start, skipped = state["iteration"], state["skipped"]
            history = [row for row in json.loads((Path(folder) / HISTORY_FILE).read_text()) if row["iteration"] <= start]
        history.append({"iteration": start, "event": "resumed"})
        print(f"[{spec.name}] rank {rank}: resumed from the checkpoint at iteration {start}", flush=True)
    # find_unused_parameters: some configs leave parameters out of the graph (a decoder with fewer
    # layers than feature levels never reads the last level's projection)
    objective = ray.train.torch.prepare_model(objective, parallel_strategy_kwargs={"find_unused_parameters": True})
    plain = objective.module.model if hasattr(objective, "module") else objective.model
    enable_image_cache(spec.data.image_cache_dir, spec.data.image_cache_gb)  # object-store images only
    ts = build_training_set(inputs.labeled_json, inputs.labeled_images, spec.model.image_size,
                            inputs.pseudo_dir if stage.use_pseudo_labels else "", inputs.pseudo_images,
                            spec.score_threshold, rank, world, inputs.pseudo_skip)
    ts.skipped.update(skipped)
    pseudo_share = stage.pseudo_share if stage.use_pseudo_labels else 0.0
    amp = device.type == "cuda" and stage.amp
    # negative sampling draws on the training device: a CPU generator cannot fill CUDA tensors
    generator = torch.Generator(device=device).manual_seed(spec.seed * 1000 + rank)
    log_every = log_interval(stage)
    window: dict[str, list[float]] = {}
    tracking = config["tracking"]
    # rank 0's rows go to MLflow from a thread: the step never waits on the tracking server
    sender = mlflow_tracking.metric_sender(tracking) if rank == 0 and tracking["run_id"] else None
    began, began_it = time.perf_counter(), start
    con_timer = (objective.module if hasattr(objective, "module") else objective).contrastive_timer
    # batches are drawn ahead on a thread (decoding off the training thread), still one pure function
    # of (seed, iteration, rank) each; `stage.prefetch` = 0 draws them in the loop
    sizes = ViewSizes.from_config(spec.data, spec.model.image_size)
    batches = BatchPrefetcher(lambda i: draw_batch(ts, i, spec.seed, stage.batch_size, rank, world, pseudo_share, sizes),
                              start, stage.iterations, stage.prefetch, skipped=lambda: ts.skipped)
    step_began = time.perf_counter()
    for it, batch in batches:
        _maybe_fail(it)
        factor = lr_factor(stage.schedule, it, stage.iterations)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        counts = [float(sum(len(t["labels"]) for t, lab in zip(batch.targets, batch.labeled) if lab == flag))
                  for flag in (True, False)]
        num_masks = tuple(max(c, 1.0) for c in _reduce_mean(counts, world, device))
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch.targets]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            terms = objective(batch.weak.to(device), batch.strong.to(device), batch.crop_boxes, batch.strong_flipped,
                              targets, batch.labeled, num_masks, generator, batch.pad_mask.to(device))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if stage.grad_clip > 0:
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(plain.parameters(), stage.grad_clip)
        optimizer.step()
        if stage.use_contrastive:  # L_con's share of the step, its backward included (SectionTimer)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            window.setdefault("contrastive_share", []).append(con_timer.pop() / (time.perf_counter() - step_began))
        for key, value in terms.items():
            window.setdefault(key, []).append(float(value.detach()))
        # the share of this step's time spent waiting for its batch (history: data_wait_share)
        window.setdefault("data_wait_share", []).append(batches.waited / max(time.perf_counter() - step_began, 1e-9))
        done = it + 1
        last = done == stage.iterations
        row = None
        if done % log_every == 0 or last:
            keys = sorted(window)
            means = _reduce_mean([sum(window[k]) / len(window[k]) for k in keys], world, device)
            row = {"iteration": done, "lr": max(g["lr"] for g in optimizer.param_groups), **dict(zip(keys, means))}
            window = {}
            if rank == 0:
                speed = (done - began_it) / (time.perf_counter() - began)
                print(f"[{spec.name}] {done}/{stage.iterations} loss {row['loss']:.3f} "
                      f"({speed:.2f} it/s, ~{(stage.iterations - done) / max(speed, 1e-9):.0f} s left)", flush=True)
        evaluate = (stage.eval_every and done % stage.eval_every == 0) or last
        if evaluate:  # every rank predicts its share of the val split; rank 0 scores
            scores = _evaluate(plain, spec, device, rank, world)
            if last and inputs.test_json:  # the held-out test split, once, at the end
                scores.update({f"test_{k}": v for k, v in _evaluate(plain, spec, device, rank, world, "test").items()})
            if rank == 0:
                row = {**(row or {"iteration": done}), **scores}
        if row is not None and rank == 0:
            history.append(row)
            if sender is not None:
                sender.log(mlflow_tracking.metrics_entry(tracking["run_id"], row, step=done))
        if done % stage.checkpoint_every == 0 or last:
            report = {"iteration": done, "skipped_images": len(batches.skipped)}
            if rank == 0:
                metrics = None
                if last:
                    metrics = {**{k: v for k, v in history[-1].items() if k.startswith(("mask_", "test_mask_"))},
                               "iterations": done,
                               "skipped": batches.skipped, "world_size": world}
                    report.update({k: v for k, v in metrics.items() if k.startswith(("mask_", "test_mask_"))})
                folder = _save(plain, config["card"], optimizer, done, history, batches.skipped, metrics)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
                shutil.rmtree(folder, ignore_errors=True)  # report() copied it into the run's storage
            else:
                ray.train.report(report)
        step_began = time.perf_counter()
    if sender is not None:
        sender.close()  # bounded; rows a silent server still holds are kept for the driver to send
