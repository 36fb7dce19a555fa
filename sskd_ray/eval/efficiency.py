"""Parameters, FLOPs and latency of any model; student vs teacher at the paper's full size.

    python -m sskd_ray.eval.efficiency --model student|teacher --preset full|builtin|tiny --json PATH

`full` builds the paper's architectures with random weights (no download). FLOPs come from
torch's FlopCounterMode (one multiply-add = 2 FLOPs); latency is the median of timed forward
passes after warm-up, batch 1, on this process's device.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sskd_ray.config import Config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.models.build import build_model, paper_model_config, tiny_model_config
from sskd_ray.models.maskformer import count_parameters


def count_flops(model: nn.Module, images: torch.Tensor) -> int:
    # FlopCounterMode's module tracker hooks tensors that require grad; a view of a parameter taken
    # under no_grad has no grad_fn and trips it, so count with gradients switched off on the params.
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(images)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


@torch.no_grad()
def measure_latency(model: nn.Module, images: torch.Tensor, warmup: int = 1, runs: int = 5) -> float:
    """Median milliseconds per forward pass."""
    for _ in range(warmup):
        model(images)
    return statistics.median(_forward_ms(model, images) for _ in range(runs))


def _forward_ms(model: nn.Module, images: torch.Tensor) -> float:
    """Milliseconds of one forward, the GPU's queue drained on both sides."""
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(images)
    if images.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


@torch.no_grad()
def compare_latency(models: dict[str, nn.Module], images: dict[str, torch.Tensor], rounds: int = 20,
                    warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per forward of each model, timed in alternation (one forward of each per
    round) so a slower stretch of a shared machine falls on all of them alike."""
    for _ in range(warmup):
        for name, model in models.items():
            model(images[name])
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(_forward_ms(model, images[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def efficiency_report(model: nn.Module, image_size: tuple[int, int], runs: int = 5) -> dict:
    model.eval()
    device = next(model.parameters()).device
    images = torch.rand(1, 3, *image_size, device=device)
    return {"params": count_parameters(model), "flops": count_flops(model, images),
            "latency_ms": measure_latency(model, images, runs=runs), "image_size": list(image_size)}


def preset_model_config(role: str, preset: str):
    if preset == "full":
        cfg = paper_model_config(role)
        return replace(cfg, pretrained="")  # random weights: architecture cost only, no download
    cfg = getattr(Config(), role)
    return tiny_model_config(cfg) if preset == "tiny" else cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("student", "teacher"), required=True)
    parser.add_argument("--preset", choices=("full", "builtin", "tiny"), required=True)
    parser.add_argument("--json", required=True, help="output path")
    parser.add_argument("--runs", type=int, default=5, help="timed forward passes (after 1 warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    cfg = preset_model_config(args.model, args.preset)
    model = build_model(cfg, list(CLASS_NAMES)).to(args.device)
    report = efficiency_report(model, (cfg.image_size, cfg.image_size), runs=args.runs)
    report.update(model=args.model, preset=args.preset, device=args.device)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
