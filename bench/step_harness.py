"""Times one student training step, piece by piece, with whatever `sskd_ray` is importable.

    PYTHONPATH=<a tree of this repo> python bench/step_harness.py --setting demo|paper|teacher --steps N --json OUT

Unlike the other benchmarks it runs as a file, not as `python -m bench.step_harness`, and imports
nothing from bench/: the `sskd_ray` it times is whichever tree PYTHONPATH names, and an older tree
(before bench/ became a package) has no bench.step_harness of its own. `python -m bench.step_profile`
runs it twice, against today's tree and against an earlier commit exported
to a temporary folder, so the before / after ratio comes from one command. It therefore uses only
what both trees have (load_config, build_model, Objective, draw_batch, param_groups, set_loss) and,
where the newer tree has it, the loop's own step setup (`sskd_ray.train.loop.prepare_step`), so the
step timed is the step the training loop runs.

Two measurements per setting:
- the whole step (draw the batch, forward, backward, optimizer), as the loop runs it: medians over
  `--steps` steps after two warm-up steps;
- the pieces in isolation on the same batch's tensors, each timed forward and forward + backward:
  backbone, neck, decoder (pixel projection + transformer decoder), embedding head, the set loss
  (with its matching and point sampling timed inside it), L_con (sampling + loss), the optimizer
  step, and drawing the batch. Their sum beside the whole step shows what the pieces miss
  (autograd bookkeeping, Python between the pieces).

Settings: `demo` is configs/default.yaml's student and distill stage (batch 4, half of it
pseudo-labeled, L_con on); `paper` is configs/cityscapes_10pct.yaml's student (DINOv2-S + DPT, random
weights) on one 512 x 1024 crop (the paper's crop; per-GPU batch 1 on this CPU); `teacher` is the
demo's teacher self-training step (the maskformer teacher with L_con). A distillation step runs no
teacher: its pseudo-labels were made once by the Ray Data labeling pass.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import sskd_ray
import sskd_ray.losses.set_loss as set_loss_module
from sskd_ray.config import load_config
from sskd_ray.data.builtin import CLASS_NAMES, build_builtin_dataset
from sskd_ray.models.build import build_model
from sskd_ray.models.freeze import param_groups
from sskd_ray.train import loop as loop_module
from sskd_ray.train.data import ViewSizes, build_training_set, draw_batch
from sskd_ray.train.objective import Objective, select

TREE = Path(sskd_ray.__file__).resolve().parents[1]


class Timer:
    """Adds the seconds spent inside wrapped functions, by name."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, module, name: str, key: str):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - began
        setattr(module, name, timed)
        return original


def setting_config(setting: str):
    """(model config, loss config, stage config, view sizes) of a setting, from the tree's own configs."""
    if setting in ("demo", "teacher"):
        cfg = load_config(TREE / "configs" / "default.yaml")
        if setting == "demo":
            return cfg.student, cfg.loss, cfg.stages.distill, ViewSizes(cfg.student.image_size, (cfg.student.image_size,) * 2)
        return cfg.teacher, cfg.loss, cfg.stages.teacher_selftrain, ViewSizes(cfg.teacher.image_size, (cfg.teacher.image_size,) * 2)
    cfg = load_config(TREE / "configs" / "cityscapes_10pct.yaml")
    stage = replace(cfg.stages.distill, batch_size=1)
    d = cfg.data
    return (replace(cfg.student, pretrained=""), cfg.loss, stage,
            ViewSizes(d.train_short_side, tuple(d.crop_size), tuple(d.scale_jitter)))


def prepare(model_cfg, loss_cfg, stage):
    """The model, objective and optimizer as the training loop builds them (the tree's own setup when
    it has one)."""
    torch.manual_seed(0)
    model = build_model(model_cfg, list(CLASS_NAMES))
    if hasattr(loop_module, "prepare_step"):
        return loop_module.prepare_step(model, loss_cfg, stage, torch.device("cpu"))
    objective = Objective(model, loss_cfg, True, stage.use_contrastive)
    optimizer = torch.optim.AdamW(param_groups(model, stage.lr, stage.backbone_lr_mult, stage.weight_decay))
    return model, objective, optimizer


def as_pseudo(batch):
    """The second half of the batch marked pseudo-labeled (its ground truth standing in for labels),
    as in a distillation step (data.pseudo_share 0.5)."""
    b = len(batch.labeled)
    batch.labeled = torch.arange(b) < max(1, b - b // 2)
    return batch


def step_once(objective, optimizer, batch, generator, model, grad_clip: float):
    counts = (float(sum(len(t["labels"]) for t, lab in zip(batch.targets, batch.labeled) if lab)),
              float(sum(len(t["labels"]) for t, lab in zip(batch.targets, batch.labeled) if not lab)))
    num_masks = tuple(max(c, 1.0) for c in counts)
    terms = objective(batch.weak, batch.strong, batch.crop_boxes, batch.strong_flipped, batch.targets,
                      batch.labeled, num_masks, generator, batch.pad_mask)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return num_masks


def median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 2)


def time_call(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return median_ms(times)


def backward_of(make):
    """Forward + backward of `make()`'s output (a tensor or a list of tensors)."""
    def run():
        out = make()
        outs = out if isinstance(out, (list, tuple)) else [out]
        torch.autograd.backward([o.float().sum() for o in outs])
    return run


def pieces(model, objective, optimizer, batch, generator, num_masks, repeats: int) -> dict:
    """Each piece of the step in isolation on this batch: forward and forward + backward (ms)."""
    b = len(batch.labeled)
    images = torch.cat([batch.weak, batch.strong]) if objective.use_contrastive else batch.weak
    x = (images - model.mean) / model.std
    if getattr(model, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.no_grad():
        full = model(images)
        decoded = full.mask_logits.shape[0]  # the images the model's forward decodes (newer trees: the weak view)
        feats = model.encoder(x)
        maps = model.neck(feats)
    leaf = lambda ts: [t.detach().requires_grad_() for t in ts]  # noqa: E731
    feats_l, maps_l = leaf(feats), leaf(maps)
    parts = {
        "backbone": lambda: model.encoder(x),
        "neck": lambda: model.neck(feats_l),
        "decoder": lambda: [t for pair in model.decoder([m[:decoded] for m in maps_l[1:][::-1]],
                                                         model.pixel_proj(maps_l[0][:decoded])) for t in pair],
        "embedding head": lambda: model.embed_head(maps_l[0]),
    }
    for name, make in parts.items():
        with torch.no_grad():
            fwd = time_call(make, repeats)
        out[name] = {"forward": fwd, "forward+backward": time_call(backward_of(make), repeats)}
    w = select(full, torch.arange(b))
    w = type(w)(w.mask_logits.detach().requires_grad_(), w.class_logits.detach().requires_grad_(),
                w.embeddings.detach().requires_grad_(), [(m.detach().requires_grad_(), c.detach().requires_grad_())
                                                         for m, c in w.aux])
    lab = batch.labeled.nonzero(as_tuple=True)[0]
    pl = (~batch.labeled).nonzero(as_tuple=True)[0]

    def set_losses():
        total = 0.0
        for idx, count in ((lab, num_masks[0]), (pl, num_masks[1])):
            if len(idx):
                total = total + set_loss_module.set_loss(select(w, idx), [batch.targets[i] for i in idx.tolist()], count,
                                                         pad_mask=batch.pad_mask[idx], **objective.weights)["loss"]
        return total

    timer = Timer()
    restore = [(set_loss_module, "hungarian_match", timer.wrap(set_loss_module, "hungarian_match", "matching")),
               (set_loss_module, "uncertain_points", timer.wrap(set_loss_module, "uncertain_points", "point sampling"))]
    calls = 1 + repeats
    fwd = time_call(lambda: set_losses(), repeats)
    fb = time_call(backward_of(set_losses), repeats)
    for module, name, original in restore:
        setattr(module, name, original)
    inner = {k: round(1000 * v / (2 * calls), 2) for k, v in timer.seconds.items()}  # per call, both runs
    out["matching"] = {"forward": inner.get("matching", 0.0), "forward+backward": inner.get("matching", 0.0)}
    out["point sampling"] = {"forward": inner.get("point sampling", 0.0), "forward+backward": inner.get("point sampling", 0.0)}
    rest = sum(inner.values())
    out["set loss (rest)"] = {"forward": round(fwd - rest, 2), "forward+backward": round(fb - rest, 2)}
    if objective.use_contrastive:
        strong = full.embeddings[b:].detach().requires_grad_()

        def con():
            loss, _ = objective._contrastive(w, strong, batch.crop_boxes, batch.strong_flipped, batch.targets,
                                             batch.labeled, generator, batch.pad_mask)
            return loss
        with torch.no_grad():
            fwd = time_call(con, repeats)
        out["L_con"] = {"forward": fwd, "forward+backward": time_call(backward_of(con), repeats)}
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = time_call(optimizer.step, repeats)
    out["optimizer"] = {"forward": opt, "forward+backward": opt}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=("demo", "paper", "teacher"), required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each piece")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_cfg, loss_cfg, stage, sizes = setting_config(args.setting)
    with tempfile.TemporaryDirectory() as tmp:
        side = min(model_cfg.image_size, 128)
        data = Path(build_builtin_dataset(Path(tmp) / "d", num_train=24, num_val=4, size=side, seed=0,
                                          labeled_fraction=1.0))
        ts = build_training_set(str(data / "train.json"), str(data / "images"), sizes.short_side)
        draw = lambda i: as_pseudo(draw_batch(ts, i, 0, stage.batch_size, 0, 1, 0.0, sizes))  # noqa: E731
        model, objective, optimizer = prepare(model_cfg, loss_cfg, stage)
        generator = torch.Generator().manual_seed(0)
        steps, data_s = [], []
        for i in range(args.steps + 2):
            began = time.perf_counter()
            batch = draw(i)
            drawn = time.perf_counter()
            num_masks = step_once(objective, optimizer, batch, generator, model, stage.grad_clip)
            if i >= 2:
                steps.append(time.perf_counter() - began)
                data_s.append(drawn - began)
        result = {"tree": str(TREE), "setting": args.setting, "threads": args.threads, "batch": stage.batch_size,
                  "step_ms": median_ms(steps), "steps_ms": [round(1000 * s, 1) for s in steps],
                  "pieces": {"data": {"forward": median_ms(data_s), "forward+backward": median_ms(data_s)},
                             **pieces(model, objective, optimizer, batch, generator, num_masks, args.repeats)}}
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("tree", "setting", "step_ms")}))


if __name__ == "__main__":
    main()
