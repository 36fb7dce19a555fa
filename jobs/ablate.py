"""The paper's ablation tables (1, 2, 3, 4, 6, 12) on the configured benchmark, over seeds.

    python jobs/ablate.py [--tables 1 2 3 4 6 12] [--seeds 0 1 2] [--out DIR] [--smoke]
                          [--max-concurrent N] [--config FILE] [key=value ...]

Ray Tune runs one trial per teacher adaptation (seed x labeled fraction), then one per student
variant (seed x distillation variant, with its refinement); a step several tables need runs once
(sskd_ray/tune/ablation_plan.py). Results: <out>/ablations.md with a CSV and a PNG per table in
<out>/ablations/; a full run (not --smoke, all tables) also writes docs/ablations.md and
docs/ablations/. Re-running the same command resumes: finished trials and steps are kept.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from sskd_ray import storage
from sskd_ray.ray_setup import init_ray
from sskd_ray.redaction import redact
from sskd_ray.tune.ablation_plan import FRACTIONS, TABLES, plan_ablation
from sskd_ray.tune.ablation_run import run_plan
from sskd_ray.tune.ablation_tables import write_report

REPO = Path(__file__).resolve().parents[1]
SMOKE_FRACTIONS = (0.25, 0.5)  # the smoke config's split and one more: Table 6's shape, in minutes


def machine(ray_info: dict) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores, {gpu}; Ray {ray_info['mode']} "
            f"({ray_info['CPU']:g} CPUs, {ray_info['GPU']:g} GPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=int, nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--smoke: 0)")
    parser.add_argument("--fractions", type=float, nargs="+", default=None,
                        help=f"Table 6's labeled fractions; default {' '.join(map(str, FRACTIONS))}")
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--out", default="", help="a folder or s3:// / gs:// URI; default: runs/ablate-<timestamp>/")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data, one seed (tests)")
    parser.add_argument("--max-concurrent", type=int, default=0, help="default: as many as the resources fit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every step")
    args = parser.parse_args()
    files = [str(Path(args.config).resolve())] + ([str(REPO / "configs" / "smoke.yaml")] if args.smoke else [])
    seeds = args.seeds or ([0] if args.smoke else [0, 1, 2])
    fractions = args.fractions or (SMOKE_FRACTIONS if args.smoke else FRACTIONS)
    out = storage.normalize(args.out or f"runs/ablate-{time.strftime('%Y%m%d-%H%M%S')}")
    plan = plan_ablation(files, args.overrides, args.tables, seeds, fractions)
    print(f"ablation: tables {args.tables}, seeds {seeds}: {len(plan.rows)} rows from {len(plan.steps)} distinct steps")
    start = time.perf_counter()
    info = init_ray()
    ctx = run_plan(plan, files, args.overrides, out, args.max_concurrent)
    wall = time.perf_counter() - start
    header = (f"# Ablations (the paper's Tables {', '.join(map(str, sorted(args.tables)))})\n\n"
              f"Command: `{redact(shlex.join(['python', 'jobs/ablate.py', *sys.argv[1:]]))}`  \n"
              f"Wall time: {wall / 60:.1f} min on {machine(info)}  \n"
              f"Seeds {seeds}; mean ± sample std (ddof=1) over seeds; paper: Cityscapes, 10 % labeled "
              f"(\"-\" where the paper gives no number for the row).")
    written = write_report(plan, ctx.folder, storage.join(out, "ablations.md"), header)
    if not args.smoke and sorted(args.tables) == sorted(TABLES):
        written += write_report(plan, ctx.folder, str(REPO / "docs" / "ablations.md"), header)
    print(storage.read_text(storage.join(out, "ablations.md")))
    print(redact(f"ablations finished in {wall:.0f} s: {', '.join(w for w in written if w.endswith('.md'))}"))


if __name__ == "__main__":
    main()
