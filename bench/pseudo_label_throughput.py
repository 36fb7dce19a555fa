"""Images/s of Ray Data pseudo-labeling with 1 and 2 actors vs a plain in-process loop, one run.

    python -m bench.pseudo_label_throughput [--images 96] [--per-shard 8] [--smoke]

Same teacher (the built-in Lite2 teacher with its shipped weights; --smoke: tiny), same images
(the built-in dataset), same per-shard code (TeacherPredictor.label_shard). Each actor uses 1 torch
thread; Ray Data with N actors is compared with a plain loop using N torch threads. Both sides are
warm: an untimed pass reads every image and runs the teacher once before anything is timed.
End-to-end times include building the teacher (plain) or starting the actors (Ray Data: a fresh
Python process each that imports torch and the model code, then builds the teacher; reported by
run_labeling as actor_start_seconds); "after start" leaves that out. Writes the table to
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--per-shard", type=int, default=8)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray
    import torch

    from bench.benchmarks_doc import write_section
    from sskd_ray.config import Config, LabelConfig
    from sskd_ray.data.builtin import build_builtin_dataset
    from sskd_ray.label.pipeline import run_labeling
    from sskd_ray.label.predictor import TeacherPredictor
    from sskd_ray.label.run import resolve_teacher
    from sskd_ray.label.sources import list_images

    tmp = Path(tempfile.mkdtemp(prefix="plbench-"))
    data = Path(build_builtin_dataset(tmp / "data", num_train=args.images, num_val=1))
    images = list_images(str(data / "train.json"))
    teacher = resolve_teacher(Config(), "builtin", args.smoke)
    teacher_id, size = teacher.id, teacher.card.inference.short_side
    cfg = LabelConfig(images_per_shard=args.per_shard, batch_size=8, torch_threads=1, score_threshold=0.3)

    def plain(threads: int, scratch: str, todo: list[dict]) -> tuple[float, float]:
        start = time.perf_counter()
        predictor = TeacherPredictor(teacher, str(tmp / scratch), replace(cfg, torch_threads=threads))
        built = time.perf_counter() - start
        for i in range(0, len(todo), cfg.images_per_shard):  # the same shards Ray Data gets
            predictor.label_shard(f"shard-{scratch}-{i:06d}", todo[i:i + cfg.images_per_shard])
        return time.perf_counter() - start, built

    for image in images:  # warm: page cache, the teacher's weights, first-call allocations
        Path(image["path"]).read_bytes()
    plain(1, "warm", images[:cfg.images_per_shard])
    plain_rows = {n: plain(n, f"plain{n}", images) for n in (1, 2)}
    rows = [(f"plain loop, {n} thread(s)", n, *plain_rows[n]) for n in (1, 2)]
    torch.set_num_threads(1)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    for actors in (1, 2):
        start = time.perf_counter()
        summary = run_labeling(images, tmp / f"ray{actors}", teacher, replace(cfg, num_actors=actors))
        rows.append((f"Ray Data, {actors} actor(s) x 1 thread", actors, time.perf_counter() - start,
                     summary["run"]["actor_start_seconds"]))
    ray.shutdown()
    n = len(images)

    def rate(total: float, begin: float) -> float:
        return n / (total - begin)

    lines = [f"Command: `python -m bench.pseudo_label_throughput --images {args.images} --per-shard {args.per_shard}"
             f"{' --smoke' if args.smoke else ''}` (teacher {teacher_id}, input {size}x{size}, "
             f"{os.cpu_count()} cores, {platform.machine()}; both sides warm; \"start\" = building the teacher "
             f"(plain) or starting the actors until the first shard begins (Ray Data)).",
             "", "| pipeline | images/s | vs plain, same threads | start s | images/s after start "
             "| after start vs plain, same threads |", "|---|---|---|---|---|---|"]
    for name, threads, total, begin in rows:
        ref_total, ref_begin = plain_rows[threads]
        lines.append(f"| {name} | {n / total:.2f} | {ref_total / total:.2f}x | {begin:.2f} | {rate(total, begin):.2f} "
                     f"| {rate(total, begin) / rate(ref_total, ref_begin):.2f}x |")
    print("\n".join(lines))
    print(f"wrote {write_section('pseudo_label_throughput', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
