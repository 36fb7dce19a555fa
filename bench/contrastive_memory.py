"""Time and peak memory of negative sampling + InfoNCE forward/backward, ours vs the naive forms.

    python bench/contrastive_memory.py [--sizes 4096 16384 65536] [--negatives 256] [--dim 128]

Each case runs in a fresh subprocess; memory is the peak resident set size above the baseline
measured after the inputs exist (CPU). "naive" builds the P x P distance matrix for sampling and
gathers the (P, K, D) negatives for the loss; it runs only where its P x P matrix fits in 8 GB.
The table is written to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

NUM_QUERIES, NUM_CLASSES = 100, 10  # sampling embedding width E = N + C, as at the paper's scale


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(p: int, k: int, d: int, mode: str) -> dict:
    import torch
    import torch.nn.functional as F

    from sskd_ray.losses.contrastive import info_nce, sample_negatives

    torch.manual_seed(0)
    qhat = F.normalize(torch.rand(p, NUM_QUERIES + NUM_CLASSES) ** 4, dim=1)
    weak = F.normalize(torch.randn(p, d), dim=1).requires_grad_()
    strong = F.normalize(torch.randn(p, d), dim=1).requires_grad_()
    base = _rss_mb()
    start = time.perf_counter()
    if mode == "ours":
        idx = sample_negatives(qhat, k)
        loss = info_nce(weak, strong, strong, idx, 0.1)
    else:
        dist = (1 - qhat @ qhat.T).clamp_(0, 1)  # (P, P)
        idx = torch.multinomial(dist, k, replacement=True)
        neg = strong[idx]  # (P, K, D)
        logits = torch.cat([(weak * strong).sum(1, keepdim=True), torch.einsum("pd,pkd->pk", weak, neg)], 1) / 0.1
        loss = -F.log_softmax(logits, 1)[:, 0].mean()
    loss.backward()
    seconds = time.perf_counter() - start
    return {"P": p, "K": k, "D": d, "mode": mode, "seconds": seconds, "peak_mb": _rss_mb() - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        p, mode = args.case.split(":")
        print(json.dumps(run_case(int(p), args.negatives, args.dim, mode)))
        return
    rows = []
    for p in args.sizes:
        for mode in ("ours", "naive"):
            if mode == "naive" and p * p * 4 > 8e9:
                rows.append({"P": p, "mode": mode, "seconds": None, "peak_mb": p * p * 4 / 1e6, "skipped": True})
                continue
            out = subprocess.run([sys.executable, __file__, "--case", f"{p}:{mode}", "--negatives",
                                  str(args.negatives), "--dim", str(args.dim)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    lines = [f"Command: `python bench/contrastive_memory.py --sizes {' '.join(map(str, args.sizes))}` "
             f"(K = {args.negatives}, D = {args.dim}, E = {NUM_QUERIES + NUM_CLASSES}; "
             f"{platform.processor() or platform.machine()}, CPU, torch threads default).", "",
             "| P | ours: s | ours: peak MB above baseline | ours: µs per anchor | naive: s | naive: peak MB |",
             "|---|---|---|---|---|---|"]
    for p in args.sizes:
        ours = next(r for r in rows if r["P"] == p and r["mode"] == "ours")
        naive = next(r for r in rows if r["P"] == p and r["mode"] == "naive")
        naive_cells = (f"not run (P x P alone: {naive['peak_mb']:,.0f} MB)", "-") if naive.get("skipped") else \
            (f"{naive['seconds']:.2f}", f"{naive['peak_mb']:,.0f}")
        lines.append(f"| {p:,} | {ours['seconds']:.2f} | {ours['peak_mb']:,.0f} | "
                     f"{1e6 * ours['seconds'] / p:.0f} | {naive_cells[0]} | {naive_cells[1]} |")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _docs import write_section

    print(f"wrote {write_section('contrastive_memory', chr(10).join(lines))}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
