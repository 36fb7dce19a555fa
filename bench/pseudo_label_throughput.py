"""Images/s of Ray Data pseudo-labeling with 1 and 2 actors vs a plain in-process loop, one run.

    python bench/pseudo_label_throughput.py [--images 96] [--per-shard 8] [--smoke]

Same teacher (the built-in Lite2 teacher with its shipped weights; --smoke: tiny), same images
(the built-in dataset), same per-shard code (TeacherPredictor.label_shard). Each actor and the
plain loop use 1 torch thread, so "2 actors" can at most double "plain" on 2 cores; a plain loop
with every thread is listed for reference. Times include building the teacher. Writes the table
to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray
    import torch

    from _docs import write_section
    from sskd_ray.config import Config, LabelConfig
    from sskd_ray.data.builtin import build_builtin_dataset
    from sskd_ray.label.pipeline import run_labeling
    from sskd_ray.label.predictor import TeacherPredictor
    from sskd_ray.label.run import resolve_teacher
    from sskd_ray.label.sources import list_images

    tmp = Path(tempfile.mkdtemp(prefix="plbench-"))
    data = Path(build_builtin_dataset(tmp / "data", num_train=args.images, num_val=1))
    images = list_images(str(data / "train.json"))
    spec, teacher_id, size = resolve_teacher(Config(), "builtin", args.smoke)
    cfg = LabelConfig(images_per_shard=args.per_shard, batch_size=8, torch_threads=1, score_threshold=0.3)
    rows = []

    def plain(threads: int) -> float:
        start = time.perf_counter()
        predictor = TeacherPredictor(spec, str(tmp / f"plain{threads}"), teacher_id, size, cfg.score_threshold,
                                     cfg.top_k, cfg.batch_size, cfg.max_image_pixels, torch_threads=threads)
        for i in range(0, len(images), cfg.images_per_shard):  # the same shards Ray Data gets
            predictor.label_shard(f"shard-plain-{i:06d}", images[i:i + cfg.images_per_shard])
        return len(images) / (time.perf_counter() - start)

    base = plain(1)
    rows.append(("plain loop, 1 thread", base))
    rows.append((f"plain loop, {os.cpu_count()} threads", plain(os.cpu_count() or 1)))
    torch.set_num_threads(1)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    for actors in (1, 2):
        start = time.perf_counter()
        run_labeling(images, tmp / f"ray{actors}", spec, teacher_id, size,
                     LabelConfig(**{**cfg.__dict__, "num_actors": actors}))
        rows.append((f"Ray Data, {actors} actor(s) x 1 thread", len(images) / (time.perf_counter() - start)))
    ray.shutdown()
    lines = [f"Command: `python bench/pseudo_label_throughput.py --images {args.images} --per-shard {args.per_shard}"
             f"{' --smoke' if args.smoke else ''}` (teacher {teacher_id}, input {size}x{size}, "
             f"{os.cpu_count()} cores, {platform.machine()}; times include building the teacher and starting actors).",
             "", "| pipeline | images/s | vs plain (1 thread) |", "|---|---|---|"]
    lines += [f"| {name} | {ips:.2f} | {ips / base:.2f}x |" for name, ips in rows]
    print("\n".join(lines))
    print(f"wrote {write_section('pseudo_label_throughput', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
