"""Predict with a trained student: COCO results json and PNG overlays.

    python jobs/predict.py --checkpoint <run_dir>/student/final --images <dir | glob | COCO json> --out DIR
                           [--threshold 0.3] [--batch-size 8] [--teacher]

Each of the three may be a local path or a URI (s3://, gs://). DIR gets predictions.json (COCO results), overlays/*.png, errors.json and summary.json; with a
COCO json that has annotations, the mask AP against them is printed. More than 256 images run on
Ray Data (the labeling pipeline's actors, resumable).
"""
from __future__ import annotations

import argparse
import json

from sskd_ray import storage
from sskd_ray.deploy.predict import predict
from sskd_ray.eval.coco_eval import evaluate_masks
from sskd_ray.models.pretrained import Student, Teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-overlays", type=int, default=50)
    parser.add_argument("--teacher", action="store_true", help="the checkpoint is a trained teacher's folder")
    args = parser.parse_args()
    model = (Teacher if args.teacher else Student).from_pretrained(args.checkpoint)
    summary = predict(model, args.images, args.out, args.batch_size, args.threshold, max_overlays=args.max_overlays)
    print(json.dumps(summary))
    if args.images.endswith(".json") and storage.read_json(args.images).get("annotations"):
        metrics = evaluate_masks(args.images, storage.read_json(summary["results"]))
        print(f"mask AP {metrics['mask_AP']:.1f}, AP50 {metrics['mask_AP50']:.1f} against {args.images}")


if __name__ == "__main__":
    main()
