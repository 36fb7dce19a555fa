"""GPU memory of one training step per stage of a paper config, estimated on any machine: does the
paper's setting fit the 24 GB card it was trained on?

    python -m bench.step_memory [--config configs/cityscapes_10pct.yaml] [--instances 20] [--gpu-gb 24]

For each stage it builds the stage's model at full size with random weights (the same builders,
freezing and objective as training), runs ONE forward of the objective on a synthetic batch of the
paper's crop size (one image: its weak view, and its strong view where the stage has L_con) under
bf16 autocast, and counts what backward would keep: the bytes of every distinct tensor storage saved
for backward (torch.autograd.graph.saved_tensors_hooks; parameters excluded, checkpointed layers keep
only their inputs, as in training). A GPU step then needs about

    weights (fp32) + gradients + AdamW's two moments (fp32, trainable parameters) + DDP's gradient
    buckets (one more copy of the trainable gradients) + saved activations x batch size per worker

Not counted: transient buffers inside single ops, the CUDA context (~0.5 GB) and allocator
fragmentation; the column "x 1.2" adds 20 % for them as a rule of thumb, not a measurement. CPU
autocast's bf16 op list is close to, not equal to, CUDA's. Results: the "step_memory" section of
docs/benchmarks.md and --json.
"""
from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from bench.benchmarks_doc import write_section
from sskd_ray.config import load_config
from sskd_ray.data.convert.cityscapes import THING_CLASSES
from sskd_ray.models.build import build_model
from sskd_ray.models.freeze import apply_freeze
from sskd_ray.train.objective import Objective

REPO = Path(__file__).resolve().parents[1]
GB = 2 ** 30
# (stage, model, labeled images, pseudo images, L_con, L_pl): one image per measurement (its weak and
# strong view with L_con); labeled and pseudo-labeled images cost the same (the same loss on other targets)
STAGES = (("teacher_finetune", "teacher", 1, 0, False, False), ("teacher_selftrain", "teacher", 0, 1, True, True),
          ("distill", "student", 0, 1, True, True), ("refine", "student", 1, 0, False, False))


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward inside the context."""

    def __init__(self, params: list[torch.Tensor]):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.total += storage.nbytes()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def synthetic_batch(images: int, crop: tuple[int, int], instances: int, classes: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = crop
    targets = []
    for _ in range(images):
        masks = torch.zeros(instances, h, w, dtype=torch.bool)
        for m in masks:  # boxes of random size and place: realistic, non-empty masks
            y0, x0 = int(torch.randint(0, h - 32, (1,), generator=g)), int(torch.randint(0, w - 32, (1,), generator=g))
            m[y0:y0 + int(torch.randint(16, h // 3, (1,), generator=g)), x0:x0 + int(torch.randint(16, w // 4, (1,), generator=g))] = True
        targets.append({"labels": torch.randint(0, classes, (instances,), generator=g), "masks": masks})
    weak = torch.rand(images, 3, h, w, generator=g)
    return {"weak": weak, "strong": weak.flip(-1).clone(), "crop_boxes": torch.tensor([[0.0, 0.0, w, h]] * images),
            "strong_flipped": torch.ones(images, dtype=torch.bool), "targets": targets,
            "pad_mask": torch.ones(images, h, w, dtype=torch.bool)}


def measure(cfg, stage: str, which: str, labeled: int, pseudo: int, con: bool, pl: bool, instances: int) -> dict:
    model_cfg = getattr(cfg, which)
    names = list(THING_CLASSES.values())
    torch.manual_seed(0)
    model = build_model(model_cfg, names)
    if model_cfg.freeze:
        apply_freeze(model, model_cfg.freeze)
    model.train()
    params = list(model.parameters())
    trainable = sum(p.numel() * 4 for p in params if p.requires_grad)
    objective = Objective(model, cfg.loss, use_pseudo_labels=pl, use_contrastive=con)
    crop = tuple(cfg.data.crop_size) or (cfg.data.train_short_side or model_cfg.image_size,) * 2
    batch = synthetic_batch(labeled + pseudo, crop, instances, len(names), seed=1)
    counter = SavedBytes(params)
    began = time.perf_counter()
    with counter.hooks(), torch.autocast("cpu", dtype=torch.bfloat16):
        terms = objective(batch["weak"], batch["strong"], batch["crop_boxes"], batch["strong_flipped"], batch["targets"],
                          torch.tensor([True] * labeled + [False] * pseudo), (float(instances), float(instances)),
                          torch.Generator().manual_seed(0), batch["pad_mask"])
    seconds = time.perf_counter() - began
    assert torch.isfinite(terms["loss"]), f"{stage}: non-finite loss"
    per_image = counter.total / (labeled + pseudo)
    batch_size = getattr(cfg.stages, stage).batch_size
    fixed = sum(p.numel() * p.element_size() for p in params) + 4 * trainable  # weights, grads, 2 moments, DDP buckets
    total = fixed + per_image * batch_size
    return {"stage": stage, "model": which, "params_m": round(sum(p.numel() for p in params) / 1e6, 1),
            "trainable_m": round(trainable / 4 / 1e6, 1), "crop": list(crop), "batch_per_worker": batch_size,
            "fixed_gb": round(fixed / GB, 2), "saved_per_image_gb": round(per_image / GB, 2),
            "estimate_gb": round(total / GB, 1), "with_margin_gb": round(1.2 * total / GB, 1),
            "forward_s_cpu": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "cityscapes_10pct.yaml"))
    parser.add_argument("--instances", type=int, default=20, help="instances per image (Cityscapes: ~20)")
    parser.add_argument("--gpu-gb", type=float, default=24.0)
    parser.add_argument("--stages", nargs="+", default=[s[0] for s in STAGES])
    parser.add_argument("--json", default="")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.config, ["teacher.pretrained=random", "student.pretrained=random"])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for stage, which, lab, pseudo, con, pl in STAGES:
        if stage in args.stages:
            rows.append(measure(cfg, stage, which, lab, pseudo, con, pl, args.instances))
            gc.collect()  # the last stage's model and graph, before the next is built
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.no_doc:
        config = Path(args.config).resolve().relative_to(REPO) if Path(args.config).resolve().is_relative_to(REPO) else args.config
        lines = [f"Command: `python -m bench.step_memory --config {config} --instances {args.instances}` "
                 f"(random weights; estimate, not a GPU measurement: see the script's docstring).", "",
                 "| stage | model (M params / trainable) | crop | batch / worker | weights+grads+AdamW+DDP (GB) | "
                 "saved activations / image (GB) | estimate (GB) | x 1.2 (GB) | fits "
                 f"{args.gpu_gb:.0f} GB |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['stage']} | {r['model']} ({r['params_m']} / {r['trainable_m']}) | {r['crop'][0]}x{r['crop'][1]} | "
                  f"{r['batch_per_worker']} | {r['fixed_gb']} | {r['saved_per_image_gb']} | {r['estimate_gb']} | "
                  f"{r['with_margin_gb']} | {'yes' if r['with_margin_gb'] <= args.gpu_gb else 'no'} |" for r in rows]
        write_section("step_memory", "\n".join(lines))


if __name__ == "__main__":
    main()
