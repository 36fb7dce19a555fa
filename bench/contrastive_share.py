"""Share of L_con (sampling + loss forward + its backward) in one student training step.

    python -m bench.contrastive_share [--config configs/default.yaml] [--steps 5] [--paper-steps 2]

Builds the student with `build_model` and the training `Objective`, draws real batches of the
built-in dataset at the config's image size and batch, and times full steps (forward, backward,
AdamW) side by side in one process for: L_con with the current implementation, L_con with the
previous one (sskd_ray/losses/contrastive.py at commit 5fce3a9, from git history), and no L_con.
The L_con time inside a step comes from `SectionTimer` wrapped around `Objective._contrastive`
exactly as the integrator's lines do in objective.py. With --paper-steps > 0 the same at the
paper's student (DINOv2-S + DPT, random weights, configs/cityscapes_10pct.yaml: 518 px square, K 256,
max_anchors 4096), batch 1, on the built-in scenes upscaled to 518 px.
Medians over --steps steps after one warm-up step.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from bench.benchmarks_doc import write_section
from bench.old_code import load_old_module

import sskd_ray.train.objective as objective_module
from sskd_ray.config import load_config
from sskd_ray.data.builtin import CLASS_NAMES, build_builtin_dataset
from sskd_ray.models.build import build_model
from sskd_ray.train.data import build_training_set, draw_batch
from sskd_ray.train.objective import Objective

REPO = Path(__file__).resolve().parents[1]
NOTES = ("Reading: 'L_con s' per step varies with the batch at the paper config: with random weights the student's "
         "masks are nearly uniform, d is ~1e-5 for every pair, and for some batches most anchors accept under 1/16 "
         "of the proposals, so they take the exact multinomial fallback over all candidates (their negatives are "
         "gathered, not shared). 'old' is the previous sampler + InfoNCE (commit 5fce3a9) behind the same objective.")


class _IndexPlan:
    """The old path's (P, K) negatives, shaped like a NegativePlan for the objective's diagnostics."""

    def __init__(self, neg: torch.Tensor):
        self.neg = neg

    def index(self) -> torch.Tensor:
        return self.neg


def _old_contrastive_loss(old):
    """The objective's `contrastive_loss` call served by an older implementation's separate sampler + loss."""
    def contrastive_loss(anchors, positives, pool, qhat_anchor, qhat_pool, num_negatives, temperature=0.1, power=1.0,
                         form="infonce", margin=0.2, exclude=None, generator=None, **_):
        if qhat_anchor is None:
            neg = old.sample_uniform_negatives(anchors.shape[0], pool.shape[0], num_negatives, generator, pool.device)
        else:
            neg = old.sample_negatives(qhat_anchor, num_negatives, power, generator, candidates=qhat_pool)
        loss = (old.margin_hinge(anchors, positives, pool, neg, margin) if form == "hinge"
                else old.info_nce(anchors, positives, pool, neg, temperature))
        return loss, _IndexPlan(neg)
    return contrastive_loss


@contextmanager
def implementation(old):
    """Swap the objective's contrastive_loss for another implementation's (None: the current one)."""
    saved = objective_module.contrastive_loss
    if old is not None:
        objective_module.contrastive_loss = _old_contrastive_loss(old)
    try:
        yield
    finally:
        objective_module.contrastive_loss = saved


def time_steps(model_cfg, loss_cfg, batches, use_contrastive: bool, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(model_cfg, list(CLASS_NAMES))
    objective = Objective(model, loss_cfg, use_pseudo_labels=False, use_contrastive=use_contrastive)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    step_s, con_s = [], []
    for i in range(steps + 1):
        b = batches[i % len(batches)]
        began = time.perf_counter()
        terms = objective(b.weak, b.strong, b.crop_boxes, b.strong_flipped, b.targets, b.labeled, (4.0, 1.0), generator)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        seconds, con = time.perf_counter() - began, objective.contrastive_timer.pop()
        if i > 0:  # the first step warms up
            step_s.append(seconds)
            con_s.append(con)
    step, con = statistics.median(step_s), statistics.median(con_s)
    return {"step_s": step, "con_s": con, "share": con / step, "con_each": [round(c, 3) for c in con_s]}


def measure(name: str, model_cfg, loss_cfg, batch_size: int, image_size: int, steps: int, data_dir: Path) -> list[str]:
    ts = build_training_set(str(data_dir / "train.json"), str(data_dir / "images"), image_size)
    batches = [draw_batch(ts, i, 0, batch_size, 0, 1, 0.0) for i in range(3)]
    print(f"[{name}] {model_cfg.encoder}+{model_cfg.neck}, {image_size} px, batch {batch_size}, "
          f"K {loss_cfg.num_negatives}, max_anchors {loss_cfg.max_anchors}", flush=True)
    rows = []
    old_code = load_old_module("5fce3a9", "sskd_ray/losses/contrastive.py")
    for label, use_con, old in (("new L_con", True, None), ("old L_con (5fce3a9)", True, old_code),
                                ("no L_con", False, None)):
        with implementation(old):
            r = time_steps(model_cfg, loss_cfg, batches, use_con, steps)
        print(f"  {label}: {r}", flush=True)
        con = f"{r['con_s']:.3f} | {100 * r['share']:.1f} %" if use_con else "- | -"
        rows.append(f"| {name} | {label} | {r['step_s']:.3f} | {con} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--paper-steps", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config)
    lines = ["| config | implementation | step s | L_con s (sampling + fwd + bwd) | L_con share |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        size = cfg.data.image_size
        data = Path(build_builtin_dataset(Path(tmp) / "demo", num_train=24, num_val=4, size=size, seed=0,
                                          labeled_fraction=1.0))
        lines += measure("demo", cfg.student, cfg.loss, cfg.stages.distill.batch_size, size, args.steps, data)
        if args.paper_steps > 0:
            paper = load_config(REPO / "configs" / "cityscapes_10pct.yaml")
            student = replace(paper.student, pretrained="")  # random weights: no download
            # the built-in scenes, upscaled by the training set's loader to the student's 518 px
            lines += measure("paper", student, paper.loss, 1, student.image_size, args.paper_steps, data)
    head = [f"Command: `python -m bench.contrastive_share --steps {args.steps} --paper-steps {args.paper_steps}` "
            f"(CPU, 2 torch threads; medians over the steps after one warm-up; the objective as in objective.py, "
            "L_con timed by SectionTimer around `_contrastive`, its backward included). 'no L_con' also skips the "
            "strong view's forward and backward, which L_con needs.", ""]
    print(f"wrote {write_section('contrastive_share', chr(10).join(head + lines + ['', NOTES]))}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
