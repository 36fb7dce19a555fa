"""Time and peak memory of negative sampling + InfoNCE forward/backward: new vs old vs naive vs a dense matmul.

    python -m bench.contrastive_memory [--sizes 4096 16384 65536] [--negatives 256] [--dim 128] [--modes-at 16384]

One run, side by side, per P (anchors = candidates = the pixels of one P-pixel map, sampling
embedding from `sampling_embedding` of smooth random mask logits, N = 100 queries, C = 10 classes):
- new:   `contrastive_loss` (shared-proposal sampling + matmul InfoNCE), the path the objective should call;
- new via index: `sample_negatives` + `info_nce` (the public pair, through a (P, K) index);
- old:   sskd_ray/losses/contrastive.py as of commit 5fce3a9, loaded from git history at bench time
         (`git show 5fce3a9:sskd_ray/losses/contrastive.py` into a temporary module);
- naive: the P x P distance matrix + torch.multinomial + a (P, K, D) gather, where P x P fits in 8 GB;
- dense: a plain (P, D) x (D, K) matmul, forward + backward: the arithmetic floor of P x K x D.
Then every sampling mode (fusion, mask, class, uniform) and the memory-bank pool (+10,000 banked
entries) with the new path at one size. Each case runs in a fresh subprocess; memory is the peak
resident set size above the baseline measured after the inputs exist. new is the median of 3 runs
after one warm-up, dense the fastest of 5 after one warm-up (its floor: at large P its time swings
with page faults on its fresh (P, K) output and gradient), old and naive run once. The table goes
to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.benchmarks_doc import write_section
from bench.old_code import REPO, load_old_module
from sskd_ray.losses.contrastive import contrastive_loss, info_nce, sample_negatives, sampling_embedding

NUM_QUERIES, NUM_CLASSES, TAU, BANK = 100, 10, 0.1, 10_000
OLD_COMMIT, OLD_PATH = "5fce3a9", "sskd_ray/losses/contrastive.py"
NOTES = ("Reading: the new path computes S ~ 1.15 K / acceptance similarities per anchor ('columns per anchor': "
         "the block's shared proposals), one E-wide matmul column for acceptance and four D-wide ones in the loss "
         "(forward, the backward's recomputation and its two matmuls), plus elementwise work over the (block, S) "
         "acceptance matrix (one uniform per anchor and proposal, a threshold, a running count). The dense matmul "
         "does K columns and no elementwise work, hence a ratio of roughly 3 S / K. A mode with lower acceptance "
         "costs more columns (class: its E = 10 mixtures of classes look alike, so d is small and uneven). "
         "'new via index' is `sample_negatives` + `info_nce` as objective.py calls them: it adds the (P, K) index "
         "round trip (compaction, then finding each block's shared columns again).")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_inputs(p: int, d: int, mode: str) -> dict:
    side = int(round(p ** 0.5))
    g = torch.Generator().manual_seed(0)
    masks = F.interpolate(3 * torch.randn(1, NUM_QUERIES, 8, 8, generator=g), size=(side, side), mode="bilinear")
    classes = 3 * torch.randn(1, NUM_QUERIES, NUM_CLASSES + 1, generator=g)
    qhat = sampling_embedding(masks, classes, "fusion" if mode in ("uniform", "bank") else mode)[0]  # (P, E)
    weak = F.normalize(torch.randn(p, d, generator=g), dim=1).requires_grad_()
    strong = F.normalize(torch.randn(p, d, generator=g), dim=1).requires_grad_()
    inputs = {"qhat": qhat, "weak": weak, "strong": strong, "pool": strong, "qpool": qhat}
    if mode == "bank":  # a memory bank of past strong-view embeddings and their sampling embeddings
        bank_q = sampling_embedding(masks, classes.roll(1, 1), "fusion")[0][torch.randperm(p, generator=g)[:BANK]]
        inputs["pool"] = torch.cat([strong, F.normalize(torch.randn(len(bank_q), d, generator=g), dim=1)])
        inputs["qpool"] = torch.cat([qhat, bank_q])
    return inputs


def step(impl: str, k: int, mode: str, x: dict, old=None) -> dict:
    """One sampling + loss forward + backward; returns extra facts about the run."""
    weak, strong, pool = x["weak"], x["strong"], x["pool"]
    if impl == "new":
        uniform = mode == "uniform"
        loss, plan = contrastive_loss(weak, strong, pool, None if uniform else x["qhat"], None if uniform else x["qpool"],
                                      k, temperature=TAU, exclude=torch.arange(len(weak)) if uniform else None)
        loss.backward()
        return {"columns_per_anchor": plan.columns_per_anchor()}
    if impl == "new_index":
        loss = info_nce(weak, strong, strong, sample_negatives(x["qhat"], k), TAU)
    elif impl == "old":
        loss = old.info_nce(weak, strong, strong, old.sample_negatives(x["qhat"], k), TAU)
    elif impl == "naive":
        dist = (1 - x["qhat"] @ x["qhat"].T).clamp_(0, 1)  # (P, P)
        idx = torch.multinomial(dist, k, replacement=True)
        neg = strong[idx]  # (P, K, D)
        logits = torch.cat([(weak * strong).sum(1, keepdim=True), torch.einsum("pd,pkd->pk", weak, neg)], 1) / TAU
        loss = -F.log_softmax(logits, 1)[:, 0].mean()
    else:  # dense: the same P x K x D of arithmetic as one matmul, forward + backward
        loss = (weak @ x["negatives"].T).sum()
    loss.backward()
    return {}


def run_case(p: int, k: int, d: int, impl: str, mode: str) -> dict:
    torch.manual_seed(0)
    x = make_inputs(p, d, mode)
    if impl == "dense":
        x["negatives"] = F.normalize(torch.randn(k, d), dim=1).requires_grad_()
    old = load_old_module(OLD_COMMIT, OLD_PATH) if impl == "old" else None
    base = _rss_mb()
    repeats = {"new": 3, "new_index": 3, "dense": 5}.get(impl, 1)
    if repeats > 1:
        step(impl, k, mode, x, old)  # warm-up
    times, extra = [], {}
    for _ in range(repeats):
        for t in (x["weak"], x["strong"], x["pool"], x.get("negatives")):
            if t is not None:
                t.grad = None
        start = time.perf_counter()
        extra = step(impl, k, mode, x, old)
        times.append(time.perf_counter() - start)
    seconds = min(times) if impl == "dense" else statistics.median(times)  # the floor: dense at its best
    return {"P": p, "impl": impl, "mode": mode, "seconds": seconds, "peak_mb": _rss_mb() - base, **extra}


def _run(p: int, impl: str, mode: str, args) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.contrastive_memory", "--case", f"{p}:{impl}:{mode}", "--negatives", str(args.negatives),
                          "--dim", str(args.dim)], cwd=REPO, capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    return row


def _table(rows: list[dict], args) -> list[str]:
    lines = ["| P | new: s | new: peak MB | new ÷ dense | new via index: s | old (5fce3a9): s | old: peak MB | "
             "naive: s | naive: peak MB | dense matmul: s | columns per anchor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in args.sizes:
        r = {row["impl"]: row for row in rows if row["P"] == p and row["mode"] == "fusion"}
        new, dense = r["new"], r["dense"]
        naive = r["naive"]
        naive_cells = (f"not run (P x P alone: {naive['peak_mb']:,.0f} MB)", "-") if naive.get("skipped") else \
            (f"{naive['seconds']:.2f}", f"{naive['peak_mb']:,.0f}")
        lines.append(f"| {p:,} | {new['seconds']:.3f} | {new['peak_mb']:,.0f} | {new['seconds'] / dense['seconds']:.1f}x | "
                     f"{r['new_index']['seconds']:.3f} | {r['old']['seconds']:.2f} | {r['old']['peak_mb']:,.0f} | "
                     f"{naive_cells[0]} | {naive_cells[1]} | {dense['seconds']:.3f} | {new['columns_per_anchor']:.0f} |")
    lines += ["", f"All modes with the new path at P = {args.modes_at:,} (memory bank: pool = P + {BANK:,} banked entries):", "",
              "| mode | s | peak MB | ÷ dense | columns per anchor |", "|---|---|---|---|---|"]
    dense = next(row for row in rows if row["P"] == args.modes_at and row["impl"] == "dense")
    for row in rows:
        if row["P"] == args.modes_at and row["impl"] == "new":
            lines.append(f"| {row['mode']} | {row['seconds']:.3f} | {row['peak_mb']:,.0f} | "
                         f"{row['seconds'] / dense['seconds']:.1f}x | {row['columns_per_anchor']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--modes-at", type=int, default=16384)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        p, impl, mode = args.case.split(":")
        print(json.dumps(run_case(int(p), args.negatives, args.dim, impl, mode)))
        return
    rows = []
    for p in args.sizes:
        for impl in ("dense", "new", "new_index", "old", "naive"):
            if impl == "naive" and p * p * 4 > 8e9:
                rows.append({"P": p, "impl": impl, "mode": "fusion", "seconds": None, "peak_mb": p * p * 4 / 1e6,
                             "skipped": True})
                continue
            rows.append(_run(p, impl, "fusion", args))
    if args.modes_at not in args.sizes:
        rows.append(_run(args.modes_at, "dense", "fusion", args))
    for mode in ("mask", "class", "uniform", "bank"):
        rows.append(_run(args.modes_at, "new", mode, args))
    lines = [f"Command: `python -m bench.contrastive_memory --sizes {' '.join(map(str, args.sizes))}` "
             f"(K = {args.negatives}, D = {args.dim}, E = {NUM_QUERIES + NUM_CLASSES}; {platform.processor() or platform.machine()}, "
             f"CPU, {torch.get_num_threads()} torch threads). Seconds are sampling + InfoNCE forward + backward; peak MB "
             "is the peak RSS above the baseline with the inputs built; 'columns per anchor' is how many similarities "
             "the new path computes per anchor (K at best).", ""] + _table(rows, args) + ["", NOTES]
    print(f"wrote {write_section('contrastive_memory', chr(10).join(lines))}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
