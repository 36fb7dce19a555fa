"""What makes two runs of the same command differ: the same training steps under changed settings.

    python -m bench.repeatability [--steps 30]

Runs `--steps` demo student steps (configs/default.yaml's student and distill stage, the loop's own
`prepare_step`, batches from the built-in data) in a fresh process per setting and compares each
setting's final weights and loss curve with the first run's:

- the same process settings again (one machine, one command: must be identical);
- a different torch thread count (1 instead of 2: a machine with other `cpus_per_worker`);
- ATen's vector kernels restricted (`ATEN_CPU_CAPABILITY=default`, no AVX2: what a CPU with other
  vector instructions, e.g. AVX-512, does differently);
- oneDNN's convolutions restricted to SSE4.1 (`ONEDNN_MAX_CPU_ISA=SSE41`: likewise for convolutions);
- both capped at AVX2, the cap the docs recommend for the same bits across x86-64 machines (on an
  AVX2 machine, as this one, it must change nothing).

Each changed setting gives other rounding in some sums; training amplifies the difference step by
step, so after a few hundred steps two such runs are two samples of the seed-to-seed spread rather
than the same number. Writes the "reproducibility" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.benchmarks_doc import write_section

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "first run": {},
    "same settings again": {},
    "1 torch thread instead of 2": {"SSKD_BENCH_THREADS": "1"},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    # the cap the docs recommend for bits across machines: on an AVX2 machine it changes nothing
    "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}

CHILD = r"""
import hashlib, json, os, sys, tempfile
from pathlib import Path
import torch
from sskd_ray.config import load_config
from sskd_ray.data.builtin import CLASS_NAMES, build_builtin_dataset
from sskd_ray.models.build import build_model
from sskd_ray.train.data import build_training_set, draw_batch
from sskd_ray.train.loop import prepare_step

torch.set_num_threads(int(os.environ.get("SSKD_BENCH_THREADS", "2")))
cfg = load_config(os.path.join(sys.argv[1], "configs", "default.yaml"))
steps = int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    data = Path(build_builtin_dataset(Path(tmp) / "d", num_train=48, num_val=4, size=128, seed=0, labeled_fraction=1.0))
    ts = build_training_set(str(data / "train.json"), str(data / "images"), 128)
    torch.manual_seed(0)
    model, objective, optimizer = prepare_step(build_model(cfg.student, list(CLASS_NAMES)), cfg.loss, cfg.stages.distill,
                                               torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    losses = []
    for it in range(steps):
        b = draw_batch(ts, it, 0, cfg.stages.distill.batch_size, 0, 1, 0.0)
        terms = objective(b.weak, b.strong, b.crop_boxes, b.strong_flipped, b.targets, b.labeled, (4.0, 1.0), generator,
                          b.pad_mask)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        losses.append(float(terms["loss"]))
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(flat, sys.argv[3])
    print(json.dumps({"losses": losses, "sha256": hashlib.sha256(flat.numpy().tobytes()).hexdigest()}))
"""


def run(env: dict, steps: int, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(steps), str(out)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import torch

    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in SETTINGS.items():
            path = Path(tmp) / f"{len(rows)}.pt"
            result = run(env, args.steps, path)
            weights = torch.load(path)
            if first is None:
                first = (result, weights)
            ref, ref_w = first
            same_step = next((i for i, (a, b) in enumerate(zip(ref["losses"], result["losses"])) if a != b), None)
            rel = float((weights - ref_w).norm() / ref_w.norm())
            rows.append(f"| {name} | {result['sha256'][:12]} | {'identical' if same_step is None else f'step {same_step}'} "
                        f"| {abs(result['losses'][-1] - ref['losses'][-1]):.2e} | {rel:.2e} |")
            print(rows[-1], flush=True)
    head = [f"Command: `python -m bench.repeatability --steps {args.steps}` ({platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}): {args.steps} demo student steps per setting, each in a fresh process.", "",
            "| setting | weights (sha256) | losses first differ at | final loss, abs. difference | weights, relative L2 difference |",
            "|---|---|---|---:|---:|"]
    notes = ["", "Reading: on one machine a run is bit-for-bit repeatable (the same weights; "
             "tests/test_repeatable.py runs the smoke pipeline twice and compares every stage). Anything that "
             "changes how a sum is split or vectorised (the torch thread count, ATen's or oneDNN's instruction set, "
             "and so the CPU model, and the torch / oneDNN version) changes the loss in the first steps and the "
             "weights by about 2 % after 20 steps; over a few hundred steps such a run becomes another sample of "
             "the seed-to-seed spread. So a table made on another machine should be read with that spread (the "
             "study's per-seed columns), not as exact figures. To reproduce bits on another x86-64 machine, use the "
             "same lock file, the same `cpus_per_worker`, and cap both instruction sets at this machine's: "
             "`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` (set before `make demo`; a local Ray passes the "
             "driver's environment to its workers)."]
    print(f"wrote {write_section('reproducibility', chr(10).join(head + rows + notes))}")


if __name__ == "__main__":
    main()
