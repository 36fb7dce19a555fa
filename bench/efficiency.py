"""Student vs teacher efficiency (parameters, FLOPs, latency), written to docs/benchmarks.md.

    python -m bench.efficiency [--presets builtin full] [--runs 3] [--device cpu|cuda]

`full` is the paper's pair with random weights (no download; the teacher needs ~8 GB RAM and
minutes on CPU); `builtin` is the demo's EfficientNet-Lite pair at the demo's sizes.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from bench.benchmarks_doc import write_section
from sskd_ray.config import load_config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.eval.efficiency import compare_latency, efficiency_report, preset_model_config
from sskd_ray.models.build import build_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["builtin"], choices=["builtin", "full"])
    parser.add_argument("--runs", type=int, default=20, help="alternating timed rounds per pair")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    demo = load_config(REPO / "configs" / "default.yaml")
    rows = []
    for preset in args.presets:
        cfgs = {role: getattr(demo, role) if preset == "builtin" else preset_model_config(role, preset)
                for role in ("student", "teacher")}
        models = {role: build_model(cfg, list(CLASS_NAMES)).to(args.device).eval() for role, cfg in cfgs.items()}
        images = {role: torch.rand(1, 3, cfg.image_size, cfg.image_size, device=args.device) for role, cfg in cfgs.items()}
        latency = compare_latency(models, images, rounds=args.runs)  # the pair in alternation
        for role, model in models.items():
            with torch.no_grad():
                r = {**efficiency_report(model, (cfgs[role].image_size,) * 2, runs=1), "latency_ms": latency[role]}
            rows.append((preset, role, cfgs[role], r))
            print(preset, role, r)
    lines = [f"Command: `python -m bench.efficiency --presets {' '.join(args.presets)} --runs {args.runs}` "
             f"({args.device}, {torch.get_num_threads()} threads, {platform.machine()}; batch 1, student and teacher "
             f"timed in alternation, median of {args.runs} rounds after three warm-up rounds).", "",
             "| preset | model | input | parameters | GFLOPs | latency |", "|---|---|---|---:|---:|---:|"]
    for preset, role, cfg, r in rows:
        name = f"{role}: {cfg.kind if cfg.kind != 'maskformer' else cfg.encoder + ' + ' + cfg.neck}"
        lines.append(f"| {preset} | {name} | {cfg.image_size} px | {r['params']:,} | {r['flops'] / 1e9:.2f} | "
                     f"{r['latency_ms']:.0f} ms |")
    write_section("efficiency_bench", "## Efficiency: student vs teacher\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
