"""The whole method: adapt the teacher, pseudo-label the pool, distill and refine the student.

    python jobs/full_pipeline.py [--config FILE ...] [--run-dir DIR] [--smoke] [--stage NAME] [--results DIR] [key=value ...]

With no arguments: the built-in benchmark on CPU with a local Ray (configs/default.yaml). Under
`ray job submit` it joins the cluster. Re-running with the same --run-dir resumes: finished stages
are skipped, an interrupted one continues from its checkpoint. `--stage` runs one stage alone
(teacher_finetune, teacher_selftrain, distill, refine, baseline) when its inputs are in the run dir.
Results: <run_dir>/report.md, <run_dir>/student/final/, MLflow in <run_dir>/mlflow.db. The run
directory may be a URI (s3://bucket/runs/x, gs://...): then set tracking.uri (or MLFLOW_TRACKING_URI)
to an MLflow server, since the default sqlite file cannot live in object storage.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from sskd_ray import storage
from sskd_ray.config import load_config
from sskd_ray.data.pseudo_labels import DamagedStoreError
from sskd_ray.eval.report import format_table
from sskd_ray.ray_setup import init_ray
from sskd_ray.redaction import redact
from sskd_ray.train.pipeline import ROWS, run_pipeline

REPO = Path(__file__).resolve().parents[1]
STAGES = ("teacher_finetune", "teacher_selftrain", "distill", "refine", "baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=[],
                        help="a YAML of overrides; repeat to layer several, later ones win (default: configs/default.yaml)")
    parser.add_argument("--run-dir", default="", help="a folder or s3:// / gs:// URI; default: runs/<timestamp>/")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data, a few iterations (tests)")
    parser.add_argument("--stage", choices=STAGES, help="run this stage alone")
    parser.add_argument("--results", default="", help="a folder for each finished step's small result file "
                        "(<step>.json: config digest, seed, metrics, val curve), e.g. to commit a study's results")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.temperature=0.2")
    args = parser.parse_args()
    files = (args.config or [str(REPO / "configs" / "default.yaml")]) + ([str(REPO / "configs" / "smoke.yaml")] if args.smoke else [])
    cfg = load_config(files, args.overrides)
    run_dir = storage.normalize(args.run_dir or cfg.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    init_ray()
    start = time.perf_counter()
    try:
        results = run_pipeline(cfg, run_dir, only=args.stage, results_dir=args.results)
    except DamagedStoreError as err:  # which file, and what repairs it; not pyarrow's traceback
        parser.exit(2, f"full_pipeline: error: {err}\n")
    if not args.stage:  # the report's table, as the run ends (the README's demo table is this one)
        print(format_table(results, ROWS))
    print(redact(f"finished in {time.perf_counter() - start:.0f} s; results in {run_dir}"))


if __name__ == "__main__":
    main()
