"""Pseudo-label selection compared on one trained teacher: Mask2Former's top-k over query x class
(the label path before issue 17) vs one class per query + mask NMS at several `label.nms_iou`.

    python jobs/full_pipeline.py --run-dir runs/sel --stage teacher_finetune
    python -m bench.pseudo_label_selection --run-dir runs/sel [--teacher teacher/finetune/final]

The teacher runs once over the run's unlabeled pool; every selection reads the same outputs at the
same 0.3 threshold on the fused score, and is measured against the pool's held-back ground truth
(sskd_ray/eval/pseudo_quality.py). Prints a markdown table; writes nothing.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


from sskd_ray import storage
from sskd_ray.data.coco import load_coco
from sskd_ray.data.resize import prepare_arrays, size_multiple
from sskd_ray.models.checkpoint import load_trained
from sskd_ray.eval.pseudo_quality import pseudo_label_quality
from sskd_ray.models.postprocess import instances_from_output, instances_to_coco, select_instances

THRESHOLD, CAP = 0.3, 20


def selections(nms_values: list[float]) -> dict:
    chosen = {"top-k over query x class (before)":
              lambda out, sizes, content, frame: instances_from_output(out, sizes, THRESHOLD, CAP, content, frame)}
    for nms in nms_values:
        chosen[f"argmax per query, nms_iou={nms:g}"] = (
            lambda n: lambda out, sizes, content, frame: select_instances(out, sizes, THRESHOLD, n, CAP, content, frame))(nms)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--teacher", default="teacher/finetune/final", help="a final/ folder inside the run")
    parser.add_argument("--nms", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.01], help="1.01: no NMS")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, card = load_trained(storage.join(args.run_dir, args.teacher))
    short_side, max_side = card.inference.short_side, card.inference.max_side
    pool_json = storage.join(args.run_dir, "splits", "unlabeled.json")
    pool = load_coco(pool_json, check_files=False)
    chosen = selections(args.nms)
    results = {name: [] for name in chosen}
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(pool.images), 16):
            chunk = pool.images[s:s + 16]
            arrays = [np.asarray(Image.open(io.BytesIO(storage.read_bytes(pool.image_path(im)))).convert("RGB"))
                      for im in chunk]
            batch, content = prepare_arrays(arrays, short_side, max_side, size_multiple(model))
            out = model(batch, image_sizes=content)
            for name, select in chosen.items():
                found = select(out, [a.shape[:2] for a in arrays], content, tuple(batch.shape[-2:]))
                for im, insts in zip(chunk, found):
                    results[name] += instances_to_coco(insts, im["id"], card.category_ids)
    print(f"{len(pool.images)} pool images, teacher {args.teacher}, {time.perf_counter() - start:.0f} s\n")
    print("| selection | per image | ground truth per image | precision | recall | mask AP | mask AP50 | "
          "class-agnostic AP |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, found in results.items():
        q = pseudo_label_quality(pool_json, found)
        share = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {name} | {q['instances_per_image']:.2f} | {q['gt_per_image']:.2f} | {share(q['precision'])} | "
              f"{share(q['recall'])} | {q['mask_AP']:.1f} | {q['mask_AP50']:.1f} | {q['mask_AP_agnostic']:.1f} |")


if __name__ == "__main__":
    main()
