"""Cost of planning a labeling run and of one training worker's store reads as the pool grows.

    python -m bench.scale --rows 10000 100000 1000000 --json scale.json

For each size N: writes a synthetic user manifest (N rows: path, image_id, size) and a pseudo-label
store (N rows, ~5 instances each, real COCO RLE strings of random blobs at 512x1024, shards of 64
rows as the labeler writes them; half the manifest's images are in it), then, each in a fresh
subprocess so peak memory is its own:
  - driver: plan the labeling run: `write_manifest` normalises the user's manifest (once per
    store), `plan_pending` streams it against the store's keys into shards of the N/2 pending
    images -> `driver_plan_s` (both), `driver_manifest_s` (the first), `driver_peak_mb`;
  - worker: open rank 0's share of the store (world `--world`) with `StoreShare` and draw
    `--steps` batches of `--batch` rows from (seed, step), decoding every row's RLE masks as
    training does -> `worker_peak_mb`, `worker_samples_per_s`, `worker_open_s`, rows read.
Writes the JSON and the "scale" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.benchmarks_doc import write_section
from sskd_ray.data.coco import encode_rle
from sskd_ray.data.pseudo_labels import shard_paths, write_shard
from sskd_ray.data.store_reader import StoreShare
from sskd_ray.label.manifest import plan_pending, write_manifest

REPO = Path(__file__).resolve().parents[1]

HEIGHT, WIDTH, INSTANCES, CATEGORIES = 512, 1024, 5, list(range(1, 11))


def _peak_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: ru_maxrss survives exec, so a child would report the
    # parent's peak (the parent writes the data and is far bigger)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def make_rles(count: int, seed: int = 0) -> list[str]:
    """`count` distinct RLE strings of random blobs (an ellipse with a wobbly radius) at 512x1024."""
    rng = np.random.default_rng(seed)
    rles = []
    for _ in range(count):
        cy, cx = rng.uniform(60, HEIGHT - 60), rng.uniform(60, WIDTH - 60)
        ry, rx = rng.uniform(20, 160), rng.uniform(20, 220)
        y0, y1 = int(max(0, cy - 1.3 * ry)), int(min(HEIGHT, cy + 1.3 * ry + 1))  # the blob's window only
        x0, x1 = int(max(0, cx - 1.3 * rx)), int(min(WIDTH, cx + 1.3 * rx + 1))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        angle = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 6)) + 0.08 * np.sin(7 * angle + rng.uniform(0, 6))
        mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
        mask[y0:y1, x0:x1] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= wobble ** 2
        rles.append(encode_rle(mask)["counts"])
    return rles


def write_data(folder: Path, rows: int, per_shard: int, rles: list[str], seed: int = 0) -> dict:
    """The manifest (one Parquet file) and the store (shards of `per_shard` rows) for `rows` images."""
    rng = np.random.default_rng(seed)
    began = time.perf_counter()
    ids = np.arange(rows, dtype=np.int64)
    names = [f"pool/{i // 1000:04d}/{i:08d}.jpg" for i in range(rows)]
    manifest = folder / "manifest.parquet"
    # a user's manifest (path, image_id, size); its ids are shifted by rows // 2, so half the pool is in the
    # store already (matched by id: the synthetic store has no key column, as a store from before keys)
    pq.write_table(pa.table({"path": [f"s3://bucket/{n}" for n in names], "image_id": ids + rows // 2,
                             "size": rng.integers(20_000, 200_000, rows)}), manifest, row_group_size=65_536)
    store = folder / "store"
    for s in range(0, rows, per_shard):
        batch = []
        for i in range(s, min(rows, s + per_shard)):
            picks = rng.integers(0, len(rles), INSTANCES)
            batch.append({"image_id": int(i), "file_name": names[i], "height": HEIGHT, "width": WIDTH, "teacher": "bench@0",
                          "instances": [{"category_id": int(rng.choice(CATEGORIES)), "score": float(rng.uniform(0.2, 1)),
                                         "bbox": [0.0, 0.0, 1.0, 1.0], "segmentation": rles[k]} for k in picks]})
        write_shard(store / f"shard-{s // per_shard:06d}.parquet", batch)
    disk = sum(p.stat().st_size for p in store.iterdir())
    return {"write_s": round(time.perf_counter() - began, 1), "store_mb": round(disk / 2**20, 1),
            "manifest_mb": round(manifest.stat().st_size / 2**20, 1), "shards": -(-rows // per_shard)}


def child_plan(manifest: str, store: str, per_shard: int) -> dict:
    """The driver's part of a labeling run: the user's manifest normalised into the run's own manifest
    (once per store), then the pending images planned into shards against the store's keys."""
    rss_start = _rss_mb()
    base = _peak_mb()
    began = time.perf_counter()
    planned = write_manifest(manifest, str(Path(store).parent / "planned"))
    normalised = time.perf_counter() - began
    shards = images = 0
    for shard in plan_pending(planned, store, per_shard):
        shards += 1
        images += len(shard["images"])
    return {"driver_plan_s": round(time.perf_counter() - began, 2), "driver_manifest_s": round(normalised, 2),
            "driver_peak_mb": round(_peak_mb(), 1), "driver_base_mb": round(base, 1),
            "driver_rss_start_mb": round(rss_start, 1), "driver_rss_end_mb": round(_rss_mb(), 1),
            "planned_shards": shards, "planned_images": images}


def child_worker(store: str, world: int, steps: int, batch: int, seed: int = 0) -> dict:
    base, rss_start = _peak_mb(), _rss_mb()
    began = time.perf_counter()
    share = StoreShare.open(store, rank=0, world=world)
    opened = time.perf_counter() - began
    instances = 0
    began = time.perf_counter()
    for step in range(steps):  # (seed, step) -> rows, as draw_batch draws
        rng = np.random.default_rng([seed, step])
        for i in rng.choice(len(share), size=batch, replace=False):
            share.row(int(i))  # the Sample (file name, id) ...
            masks, labels = share.targets(int(i), CATEGORIES, 0.3)  # ... and its decoded masks
            instances += len(labels)
    seconds = time.perf_counter() - began
    return {"worker_peak_mb": round(_peak_mb(), 1), "worker_base_mb": round(base, 1), "worker_rss_start_mb": round(rss_start, 1),
            "worker_rss_end_mb": round(_rss_mb(), 1),
            "worker_samples_per_s": round(steps * batch / seconds, 1), "worker_open_s": round(opened, 2),
            "share_rows": len(share), "rows_read": share.rows_read, "row_groups_read": len(share.row_groups_read),
            "instances_decoded": instances}


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.scale", "--child", *args], cwd=REPO, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(rows: int, args, rles: list[str]) -> dict:
    folder = Path(args.workdir) / f"rows-{rows}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = {"rows": rows, **write_data(folder, rows, args.per_shard, rles)}
    print(f"  wrote {rows:,} rows in {result['write_s']} s ({result['store_mb']} MB store)", flush=True)
    result.update(_run_child("plan", str(folder / "manifest.parquet"), str(folder / "store"), str(args.per_shard)))
    result.update(_run_child("worker", str(folder / "store"), str(args.world), str(args.steps), str(args.batch)))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def table(results: list[dict], args) -> str:
    lines = [f"Command: `python -m bench.scale --rows {' '.join(str(r['rows']) for r in results)}` "
             f"(store: shards of {args.per_shard} rows, {INSTANCES} instances per row, RLE of random blobs at "
             f"{HEIGHT}x{WIDTH}; worker: rank 0 of {args.world}, {args.steps} steps x {args.batch} rows, RLE decoded; "
             f"each measurement in a fresh process, peak = its VmHWM; {platform.machine()}, 2 cores shared).",
             "Planning: `write_manifest` + `plan_pending` (half the pool already in the store).", "",
             "| rows | store (MB, write s) | driver_plan_s (of which manifest) | driver_peak_mb | worker_open_s | worker_peak_mb "
             "| worker RSS start -> end (MB) | worker_samples_per_s | row groups read per sample |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['store_mb']:,} ({r['write_s']}) | {r['driver_plan_s']} "
                     f"({r['driver_manifest_s']}) | {r['driver_peak_mb']} "
                     f"| {r['worker_open_s']} | {r['worker_peak_mb']} | {r['worker_rss_start_mb']} -> {r['worker_rss_end_mb']} "
                     f"| {r['worker_samples_per_s']} "
                     f"| {r['row_groups_read'] / (args.steps * args.batch):.2f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        result = child_plan(rest[0], rest[1], int(rest[2])) if kind == "plan" else \
            child_worker(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--json", default="")
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rles", type=int, default=4096, help="distinct RLE strings the rows draw from")
    parser.add_argument("--workdir", default="/tmp/sskd-scale-bench")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    began = time.perf_counter()
    rles = make_rles(args.rles)
    print(f"{len(rles)} RLE strings (mean {np.mean([len(r) for r in rles]):.0f} bytes) in "
          f"{time.perf_counter() - began:.1f} s", flush=True)
    results = []
    for rows in args.rows:
        print(f"{rows:,} rows", flush=True)
        results.append(measure(rows, args, rles))
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "results": results}, indent=2))
    if not args.no_docs:
        write_section("scale", table(results, args))


if __name__ == "__main__":
    main()
