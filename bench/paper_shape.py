"""The paper's Cityscapes configuration end to end on whatever machine this is, with random weights:
full-size models (mm-Grounding-DINO-L + SAM2.1-L teacher, DINOv2-S + DPT student), 2048 x 1024
images, batch 1, a couple of iterations per stage. It proves the users' path runs (every stage, at
the real sizes) and measures wall time and peak memory per stage; it does not measure accuracy.

    python -m bench.paper_shape [--images 6] [--iterations 2] [--out runs/paper_shape] [--config configs/cityscapes_10pct.yaml]

Re-running with the same --out resumes the pipeline: steps a previous invocation finished are skipped
and their rows kept from its result file (marked "earlier run"); the peak and wall of this invocation
cover the steps it ran.

The images are built-in scenes at Cityscapes' size (two 1024-px scenes side by side: 2048 x 1024,
exact masks); 1/3 labeled, the rest the pool, one extra image for val. Peak memory is the machine's
used memory (MemTotal - MemAvailable) above its level before the run, sampled every 0.5 s: run it
with nothing else on the machine. Results: <out>/paper_shape.json and the "paper_shape" section of
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.benchmarks_doc import write_section
from sskd_ray.data.builtin import categories, load_assets, render_scene
from sskd_ray.data.coco import encode_rle, mask_to_bbox, write_coco
from sskd_ray.data.splits import write_split_file

REPO = Path(__file__).resolve().parents[1]
STAGE_FOLDERS = {"teacher before adaptation": "teacher/initial", "teacher_finetune": "teacher/finetune",
                 "label (fine-tuned teacher)": "pseudo/finetune", "teacher_selftrain": "teacher/selftrain",
                 "label (adapted teacher)": "pseudo/adapted", "distill": "student/distill",
                 "refine": "student/refine", "baseline": "student/baseline"}


def write_wide_dataset(out: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """`count` 2048 x 1024 train images + 1 val image (two scenes side by side) as COCO."""
    from PIL import Image

    assets = load_assets()
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", 1)):
        images, annotations = [], []
        for i in range(n):
            # the textures are 256 px: render 512-px scenes and enlarge them x2 (masks exactly, by repetition)
            halves = [render_scene(rng, assets, split, 512) for _ in range(2)]
            halves = [(np.asarray(Image.fromarray(im).resize((1024, 1024), Image.BILINEAR)),
                       [m.repeat(2, 0).repeat(2, 1) for m in masks], classes) for im, masks, classes in halves]
            image = np.concatenate([h[0] for h in halves], axis=1)  # (1024, 2048, 3)
            name = f"{split}/{i:04d}.png"
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(out / "images" / name)
            image_id = i + 1 + (0 if split == "train" else 1000)
            images.append({"id": image_id, "file_name": name, "height": 1024, "width": 2048})
            for side, (_, masks, classes) in enumerate(halves):
                for mask, cls in zip(masks, classes):
                    full = np.zeros((1024, 2048), dtype=bool)
                    full[:, side * 1024:(side + 1) * 1024] = mask
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                        "segmentation": encode_rle(full), "area": int(full.sum()),
                                        "bbox": mask_to_bbox(full), "iscrowd": 0})
        write_coco(str(out / f"{split}.json"), images, annotations, categories())
        if split == "train":
            labeled = [im["id"] for im in images[: max(1, n // 3)]]
            write_split_file(str(out / "labeled.txt"), images, labeled)
    return out / "train.json", out / "val.json"


def used_mb() -> float:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kb = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
    return kb / 1024


class MemorySampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), used_mb()))
            time.sleep(0.5)


def overrides(data: Path, iterations: int) -> list[str]:
    out = ["data.source=coco", f"data.train_json={data / 'train.json'}", f"data.train_images={data / 'images'}",
           f"data.val_json={data / 'val.json'}", f"data.val_images={data / 'images'}",
           f"data.split_file={data / 'labeled.txt'}", "teacher.pretrained=random", "student.pretrained=random",
           "label.num_actors=1", "label.num_gpus_per_actor=0", "label.num_cpus_per_actor=1",
           "label.torch_threads=2", "label.batch_size=1", "label.images_per_shard=2", "tracking.uri="]
    for stage in ("teacher_finetune", "teacher_selftrain", "distill", "refine"):
        out += [f"stages.{stage}.{k}={v}" for k, v in
                (("iterations", iterations), ("batch_size", 1), ("num_workers", 1), ("cpus_per_worker", 2),
                 ("use_gpu", "false"), ("checkpoint_every", iterations), ("eval_every", 0))]
    return out


def done_marker(folder: Path) -> Path:
    """The file whose time says when a step finished: its DONE (training, evaluation), else the labeling
    pass's summary.json."""
    return folder / "DONE" if (folder / "DONE").is_file() else folder / "summary.json"


def stage_windows(run_dir: Path, began: float) -> dict[str, tuple[float, float]]:
    """Each step's (start, end) from its folder's DONE file times, in pipeline order; steps finished
    before `began` (a resumed run) are left out."""
    windows, last = {}, began
    for name, folder in STAGE_FOLDERS.items():
        done = done_marker(run_dir / folder)
        if done.is_file() and done.stat().st_mtime > began:
            end = done.stat().st_mtime
            windows[name] = (last, end)
            last = end
    return windows


def earlier_rows(result_file: Path, run_dir: Path, began: float) -> list[dict]:
    """The rows of steps a previous invocation finished (the pipeline resumes and skips them), from
    that invocation's result file, marked as such."""
    if not result_file.is_file():
        return []
    rows = []
    for row in json.loads(result_file.read_text()).get("steps", []):
        done = done_marker(run_dir / STAGE_FOLDERS.get(row["step"], "?"))
        if done.is_file() and done.stat().st_mtime <= began:
            rows.append({**row, "earlier_run": row.get("earlier_run", True)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "runs" / "paper_shape"))
    parser.add_argument("--config", default=str(REPO / "configs" / "cityscapes_10pct.yaml"))
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    data = out / "data"
    if not (data / "val.json").is_file():
        write_wide_dataset(data, args.images)
    run_dir = out / "run"
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--config", args.config, "--run-dir", str(run_dir),
           *overrides(data, args.iterations)]
    print(" ".join(cmd), flush=True)
    baseline = used_mb()
    sampler = MemorySampler()
    sampler.start()
    began = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    wall = time.time() - began
    sampler.stop.set()
    sampler.join()
    rows = earlier_rows(out / "paper_shape.json", run_dir, began)
    for name, (start, end) in stage_windows(run_dir, began).items():
        inside = [mb for t, mb in sampler.samples if start <= t <= end] or [baseline]
        rows.append({"step": name, "seconds": round(end - start, 1), "peak_used_gb": round((max(inside) - baseline) / 1024, 2)})
    result = {"command": " ".join(["python -m bench.paper_shape", f"--images {args.images}",
                                   f"--iterations {args.iterations}"]),
              "returncode": proc.returncode, "wall_s": round(wall, 1), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} cores, {round(int(Path('/proc/meminfo').read_text().split()[1]) / 2**20)} GiB",
              "peak_used_gb": round((max(mb for _, mb in sampler.samples) - baseline) / 1024, 2), "steps": rows}
    (out / "paper_shape.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not args.no_doc:
        lines = [f"Command: `{result['command']}` ({result['machine']}; random weights, 2048 x 1024 images, "
                 f"batch 1, {args.iterations} iterations per stage). Exit code {proc.returncode}, "
                 f"{result['wall_s']:.0f} s in all.", "", "| step | wall s | peak memory above idle (GB) |",
                 "|---|---:|---:|"]
        lines += [f"| {r['step']}{' (earlier run, resumed past)' if r.get('earlier_run') else ''} | "
                  f"{r['seconds']:.0f} | {r['peak_used_gb']:.1f} |" for r in rows]
        write_section("paper_shape", "\n".join(lines))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
