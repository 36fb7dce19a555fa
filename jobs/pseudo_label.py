"""Pseudo-label an image pool with a teacher, on Ray Data.

    python jobs/pseudo_label.py --images <dir | glob | COCO json | Parquet/CSV manifest> --teacher <checkpoint dir | builtin>
                                --out DIR [--config FILE] [--smoke] [--reuse-manifest] [key=value ...]

Re-running with the same --out labels only the images not in the store yet (a grown pool: its new
images). The listing is written to DIR/manifest.parquet; --reuse-manifest plans from it without
listing again. Joins a running Ray cluster (RAY_ADDRESS, or `ray start --head` on this machine),
else starts a local Ray; SSKD_RAY_LOCAL=1 forces a private local one. Outputs in DIR:
shard-*.parquet, manifest.parquet, errors.jsonl, summary.json, coco_results.json, scores.png, and an
MLflow run.
"""
from __future__ import annotations

import argparse
import json

from sskd_ray.config import load_config
from sskd_ray.data.pseudo_labels import DamagedStoreError
from sskd_ray.label.lease import StoreBusyError
from sskd_ray.label.manifest import EmptyPoolError
from sskd_ray.label.run import label_pool
from sskd_ray.ray_setup import init_ray
from sskd_ray.redaction import redact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--teacher", default="builtin")
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny random-weight teacher, small input: seconds")
    parser.add_argument("--reuse-manifest", action="store_true", help="plan from DIR/manifest.parquet, no listing")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    init_ray()
    try:
        summary = label_pool(cfg, args.images, args.teacher, args.out, smoke=args.smoke,
                             reuse_manifest=args.reuse_manifest)
    except (EmptyPoolError, FileNotFoundError, DamagedStoreError, StoreBusyError) as err:
        parser.exit(2, f"pseudo_label: error: {err}\n")
    print(json.dumps({k: summary[k] for k in ("images_seen", "images_labeled", "images_skipped", "instances",
                                              "images_per_second", "teacher") if k in summary}))
    print(redact(f"pseudo-labels in {args.out} (summary.json, errors.jsonl, coco_results.json, scores.png)"))


if __name__ == "__main__":
    main()
