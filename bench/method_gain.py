"""The method's gain on the built-in benchmark, over seeds: the demo pipeline once per seed, every
stage's mask AP / AP50 as mean +- std, the issue's goals checked seed by seed.

    python -m bench.method_gain --seeds 0 1 2 [--out runs/method_gain] [--config configs/default.yaml] [key=value ...]
    python -m bench.method_gain --seeds 0 1 2 --report-only   # tables and plot again, nothing re-run

Each seed is `jobs/full_pipeline.py --config <config> --run-dir <out>/seed<s> seed=<s>` (the data and
its labeled split stay the same; the seed changes every random draw of training and labeling).
Re-running with the same --out resumes: finished seeds and stages are read back, not re-run.
Writes <out>/method_gain.json, <out>/report.md with the figure, and (unless --no-doc) the
"method_gain" section of docs/benchmarks.md and docs/method_gain.png. Standard deviations are over
seeds (ddof=1).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from bench.benchmarks_doc import write_section
from sskd_ray.eval.plots import pyplot, save_figure

REPO = Path(__file__).resolve().parents[1]
STAGES = (("teacher_initial", "teacher/initial", "teacher before adaptation (zero-shot)"),
          ("teacher_finetune", "teacher/finetune", "teacher fine-tuned on labeled"),
          ("teacher_selftrain", "teacher/selftrain", "teacher adapted (self-trained + L_con)"),
          ("baseline", "student/baseline", "student, supervised only"),
          ("distill", "student/distill", "student after transfer"),
          ("refine", "student/refine", "student after refinement"))
KEYS = ("mask_AP", "mask_AP50", "mask_AP_agnostic")


def run_seed(config: str, out: Path, seed: int, overrides: list[str]) -> float:
    """One pipeline run (resumed when its folder holds finished stages); its wall seconds."""
    run_dir = out / f"seed{seed}"
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--config", config, "--run-dir", str(run_dir),
           f"seed={seed}", *overrides]
    print(" ".join(cmd), flush=True)
    began = time.time()
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True)
    return time.time() - began


def read_seed(run_dir: Path) -> dict:
    """{stage: {key: value}} and the labeling passes' quality from one run directory."""
    stages = {}
    for name, folder, _ in STAGES:
        metrics = json.loads((run_dir / folder / "metrics.json").read_text())
        stages[name] = {k: float(metrics[k]) for k in KEYS if k in metrics}
    passes = {}
    for name in ("finetune", "adapted"):
        summary = run_dir / "pseudo" / name / "summary.json"
        if summary.is_file():
            data = json.loads(summary.read_text())
            passes[name] = {"instances_per_image": data["instances"] / max(1, data["images_labeled"]),
                            **{k: v for k, v in data.get("quality", {}).items() if isinstance(v, (int, float))}}
    return {"stages": stages, "pseudo_labels": passes}


def goals(stages: dict) -> list[tuple[str, float]]:
    """(goal, slack) per goal of the issue for one seed: slack >= 0 means it holds (slack > 0 for
    strict inequalities), else it is missed by -slack AP points."""
    ap = {name: m["mask_AP"] for name, m in stages.items()}
    zero, fine, adapted = ap["teacher_initial"], ap["teacher_finetune"], ap["teacher_selftrain"]
    sup, dist, ref = ap["baseline"], ap["distill"], ap["refine"]
    return [("teacher zero-shot > 0", zero), ("teacher fine-tuned > zero-shot", fine - zero),
            ("teacher adapted >= fine-tuned", adapted - fine), ("student distilled > supervised-only", dist - sup),
            ("student refined >= 1.5 x supervised-only", ref - 1.5 * sup),
            ("stretch: student refined >= adapted teacher", ref - adapted)]


def holds(goal: str, slack: float) -> bool:
    return slack >= 0 if ">=" in goal else slack > 0


def mean_std(values: list[float]) -> str:
    arr = np.asarray(values, dtype=float)
    std = arr.std(ddof=1) if len(arr) > 1 else 0.0
    return f"{arr.mean():.1f} ± {std:.1f}"


def tables(per_seed: dict[int, dict]) -> str:
    seeds = sorted(per_seed)
    lines = ["| model | mask AP | mask AP50 | class-agnostic AP | AP per seed |", "|---|---:|---:|---:|---|"]
    for name, _, label in STAGES:
        col = {k: [per_seed[s]["stages"][name].get(k, float("nan")) for s in seeds] for k in KEYS}
        lines.append(f"| {label} | {mean_std(col['mask_AP'])} | {mean_std(col['mask_AP50'])} | "
                     f"{mean_std(col['mask_AP_agnostic'])} | {' / '.join(f'{v:.1f}' for v in col['mask_AP'])} |")
    lines += ["", "| goal (mask AP) | holds in seeds | margin per seed (AP points; < 0: missed by) |", "|---|---|---|"]
    checks = {s: goals(per_seed[s]["stages"]) for s in seeds}
    for i, (goal, _) in enumerate(checks[seeds[0]]):
        ok = [s for s in seeds if holds(goal, checks[s][i][1])]
        lines.append(f"| {goal} | {len(ok)} / {len(seeds)} | {' / '.join(f'{checks[s][i][1]:+.1f}' for s in seeds)} |")
    passes = [(s, n, q) for s in seeds for n, q in per_seed[s]["pseudo_labels"].items()]
    if passes:
        keys = sorted({k for _, _, q in passes for k in q})
        lines += ["", "| seed | labeling pass | " + " | ".join(keys) + " |", "|---|---|" + "---:|" * len(keys)]
        lines += [f"| {s} | {n} | " + " | ".join(_number(q.get(k, float("nan"))) for k in keys) + " |"
                  for s, n, q in passes]
    return "\n".join(lines)


def _number(value: float) -> str:
    """Counts as integers, rates and APs with two decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def plot(per_seed: dict[int, dict], path: Path) -> str:
    plt = pyplot()
    seeds = sorted(per_seed)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, (name, _, label) in enumerate(STAGES):
        values = [per_seed[s]["stages"][name]["mask_AP"] for s in seeds]
        colour = "#4c72b0" if name.startswith("teacher") else "#55a868"
        ax.bar(i, np.mean(values), yerr=np.std(values, ddof=1) if len(values) > 1 else 0, color=colour, alpha=0.7,
               capsize=4)
        ax.scatter([i] * len(values), values, color="#222222", s=10, zorder=3)
    ax.set_xticks(range(len(STAGES)), [textwrap.fill(label, 16) for _, _, label in STAGES], fontsize=7)
    ax.set_ylabel("val mask AP")
    ax.set_title(f"built-in benchmark, {len(seeds)} seeds (bars: mean ± std, dots: seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()  # room for the three-line stage names
    return save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(REPO / "runs" / "method_gain"))
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: tables, plot and doc again from <out>'s finished seeds (walls from its method_gain.json)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every seed")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    if args.report_only:
        walls = {int(s): w for s, w in json.loads((out / "method_gain.json").read_text())["wall_s"].items()}
        walls = {s: walls[s] for s in args.seeds}  # a seed never run there: KeyError naming it
    else:
        walls = {s: run_seed(args.config, out, s, args.overrides) for s in args.seeds}
    per_seed = {s: read_seed(out / f"seed{s}") for s in args.seeds}
    text = tables(per_seed)
    figure = plot(per_seed, out / "method_gain.png")
    command = " ".join(["python -m bench.method_gain --seeds", *map(str, args.seeds), *args.overrides])
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    result = {"command": command, "machine": machine, "wall_s": {str(s): round(w, 1) for s, w in walls.items()},
              "per_seed": {str(s): v for s, v in per_seed.items()}}
    (out / "method_gain.json").write_text(json.dumps(result, indent=2))
    walls_text = ", ".join(f"seed {s}: {w / 60:.1f} min" for s, w in walls.items())
    header = (f"Command: `{command}` ({machine}; wall per seed this invocation — {walls_text}; a resumed seed "
              f"counts only what it re-ran). Mean ± std over seeds (ddof=1).")
    (out / "report.md").write_text(f"# Method gain on the built-in benchmark\n\n{header}\n\n{text}\n\n"
                                   f"![mask AP per stage](method_gain.png)\n")
    print(text)
    if not args.no_doc:
        shutil.copyfile(figure, REPO / "docs" / "method_gain.png")
        write_section("method_gain", f"{header}\n\n{text}\n\n![mask AP per stage](method_gain.png)")


if __name__ == "__main__":
    main()
