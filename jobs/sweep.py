"""Ray Tune sensitivity sweeps (the paper's Table 8) over the training stages.

    python jobs/sweep.py --space tune_spaces/contrastive_weight.yaml [--config FILE] [--run-dir DIR]
                         [--smoke] [key=value ...]

Results: <run_dir>/sensitivity.md and .csv (Table 8 layout, mean ± std over seeds), one PNG per
factor, an MLflow parent run with one run per trial. Re-running the same command resumes the
sweep; finished trials are not run again.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from sskd_ray import storage
from sskd_ray.ray_setup import init_ray
from sskd_ray.tune.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", required=True, help="a tune_spaces/*.yaml file")
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--run-dir", default="", help="a folder or s3:// / gs:// URI; default: runs/sweep-<timestamp>/")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data, a few iterations (tests)")
    parser.add_argument("--max-concurrent", type=int, default=0, help="default: as many as the resources fit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every trial")
    args = parser.parse_args()
    files = [str(Path(args.config).resolve())] + ([str(REPO / "configs" / "smoke.yaml")] if args.smoke else [])
    run_dir = storage.normalize(args.run_dir or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    init_ray()
    run_sweep(str(Path(args.space).resolve()), files, args.overrides, run_dir, args.max_concurrent)


if __name__ == "__main__":
    main()
