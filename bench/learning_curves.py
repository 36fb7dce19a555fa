"""Learning curves on the built-in benchmark, and the study budget they give.

    python -m bench.learning_curves [--seed 0] [--finetune 800] [--selftrain 1600] [--distill 6000]
                                   [--refine 1200] [--baseline 6000] [--eval-every 250] [--report-only]

Runs the demo pipeline (configs/default.yaml) once with every stage long enough to plateau, each
evaluated on VAL every few hundred iterations (`stages.<name>.eval_every`): the teacher's fine-tuning
and self-training, the distilled student, the refined student (from the distilled one at the end of
its run) and the supervised-only student. Every finished step leaves its small result file (with
the val curve) in results/learning_curves/seed<k>/, so the analysis and the docs come from those
files (`--report-only` re-renders from them without running anything).

Budget rule (the issue's): a stage's plateau is the highest value of its val curve after a running
mean over three evaluations; its budget is the first evaluation at which that running mean comes
within 0.5 AP of the plateau. A curve taken along one long run is at a higher learning rate than a
short run's end (the poly schedule decays to 0 at the configured length), so a run stopped at the
budget with its own schedule tends to end at or above the curve there: the rule is conservative.

Also on val: which pseudo-label score threshold the adapted teacher's labels are best at (precision,
recall and F1 of the kept labels at each threshold, `sskd_ray/eval/pseudo_quality.py`): thresholds
are chosen on val, never on test. Writes docs/learning_curves.png and the "learning_curves" section
of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.benchmarks_doc import write_section

REPO = Path(__file__).resolve().parents[1]
STAGES = ("teacher_finetune", "teacher_selftrain", "distill", "refine", "baseline")
LABELS = {"teacher_finetune": "teacher, fine-tuned on labeled", "teacher_selftrain": "teacher, self-trained + L_con",
          "distill": "student, distilled", "refine": "student, refined (from the distilled end)",
          "baseline": "student, supervised only"}
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
WITHIN = 0.5  # AP: the budget is where the running mean comes this close to the plateau


def running_mean(values: list[float], window: int = 3) -> np.ndarray:
    """Trailing mean over up to `window` values (the first points average what there is)."""
    v = np.asarray(values, dtype=float)
    return np.array([v[max(0, i - window + 1):i + 1].mean() for i in range(len(v))])


def budget(curve: list[dict], key: str = "mask_AP", within: float = WITHIN) -> dict:
    """{plateau, budget (iteration), at_budget, last, still_rising} of one val curve (see the module doc)."""
    its = [row["iteration"] for row in curve]
    smooth = running_mean([row[key] for row in curve])
    plateau = float(smooth.max())
    first = int(np.argmax(smooth >= plateau - within))
    rising = bool(len(smooth) >= 3 and smooth[-1] >= plateau - 1e-9 and smooth[-1] > smooth[-3] + within / 2)
    return {"plateau": round(plateau, 2), "budget": its[first], "at_budget": round(float(smooth[first]), 2),
            "last": round(float(smooth[-1]), 2), "still_rising": rising, "evaluations": len(its)}


def run_pipeline(args, results: Path) -> None:
    overrides = [f"seed={args.seed}",
                 f"stages.teacher_finetune.iterations={args.finetune}", f"stages.teacher_finetune.eval_every={args.teacher_eval_every}",
                 f"stages.teacher_selftrain.iterations={args.selftrain}", f"stages.teacher_selftrain.eval_every={args.teacher_eval_every}",
                 f"stages.distill.iterations={args.distill}", f"stages.distill.eval_every={args.eval_every}",
                 f"stages.refine.iterations={args.refine}", f"stages.refine.eval_every={args.refine_eval_every}",
                 f"stages.distill.checkpoint_every={args.eval_every}", f"stages.refine.checkpoint_every={args.refine_eval_every}"]
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), "--config", args.config, "--run-dir",
           str(Path(args.out) / f"seed{args.seed}"), "--results", str(results), *overrides]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True)


def thresholds_on_val(args, results: Path) -> dict:
    """Label the val split with the adapted teacher at the lowest threshold, then score the labels kept
    at each threshold against val's ground truth."""
    out = results / "thresholds.json"
    if out.is_file():
        return json.loads(out.read_text())
    from sskd_ray.config import load_config
    from sskd_ray.eval.pseudo_quality import pseudo_label_quality
    from sskd_ray.label.run import label_pool
    from sskd_ray.ray_setup import init_ray

    run_dir = Path(args.out) / f"seed{args.seed}"
    cfg = load_config(args.config, [f"seed={args.seed}"])
    cfg = replace(cfg, label=replace(cfg.label, score_threshold=min(THRESHOLDS)))
    val_json = str(run_dir / "splits" / "val.json")
    store = run_dir / "val_labels"
    init_ray()
    label_pool(cfg, val_json, str(run_dir / "teacher" / "selftrain" / "final"), str(store))
    labels = json.loads((store / "coco_results.json").read_text())
    rows = []
    for t in THRESHOLDS:
        q = pseudo_label_quality(val_json, [r for r in labels if r["score"] >= t])
        p, r = q["precision"] or 0.0, q["recall"] or 0.0
        rows.append({"threshold": t, "precision": round(p, 3), "recall": round(r, 3),
                     "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0, "per_image": round(q["instances_per_image"], 2),
                     "mask_AP": round(q["mask_AP"], 2)})
    best = max(rows, key=lambda row: row["f1"])
    record = {"teacher": "teacher/selftrain/final", "split": "val", "rows": rows, "best_f1_threshold": best["threshold"]}
    out.write_text(json.dumps(record, indent=1))
    return record


def plot(curves: dict, budgets: dict, path: Path) -> None:
    from sskd_ray.eval.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group in zip(axes, (("teacher_finetune", "teacher_selftrain"), ("baseline", "distill", "refine"))):
        for name in group:
            if name not in curves:
                continue
            its = [row["iteration"] for row in curves[name]]
            ap = [row["mask_AP"] for row in curves[name]]
            line, = ax.plot(its, ap, marker=".", alpha=0.45, label=LABELS[name])
            ax.plot(its, running_mean(ap), color=line.get_color())
            ax.axvline(budgets[name]["budget"], color=line.get_color(), linestyle=":", alpha=0.8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("val mask AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("teacher adaptation", fontsize=10)
    axes[1].set_title("students (dotted: the chosen budget)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, str(path))


def report(args, results: Path) -> str:
    curves, budgets = {}, {}
    for name in STAGES:
        record = results / f"{name}.json"
        if record.is_file() and json.loads(record.read_text()).get("curve"):
            curves[name] = json.loads(record.read_text())["curve"]
            budgets[name] = budget(curves[name])
    plot(curves, budgets, REPO / "docs" / "learning_curves.png")
    lines = [f"Command: `python -m bench.learning_curves --seed {args.seed} --finetune {args.finetune} --selftrain "
             f"{args.selftrain} --distill {args.distill} --refine {args.refine} --eval-every {args.eval_every}` "
             f"(configs/default.yaml otherwise; results in `results/learning_curves/seed{args.seed}/`). Val mask AP "
             f"along one long run per stage; plateau = the highest 3-evaluation running mean; budget = the first "
             f"evaluation within {WITHIN} AP of it.", "",
             "| stage | evaluations | plateau (val AP) | budget (iterations) | running mean there | at the end | still rising at the end |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, b in budgets.items():
        lines.append(f"| {LABELS[name]} | {b['evaluations']} | {b['plateau']:.1f} | {b['budget']} | {b['at_budget']:.1f} | "
                     f"{b['last']:.1f} | {'yes' if b['still_rising'] else 'no'} |")
    lines += ["", "![val mask AP along the long runs](learning_curves.png)", ""]
    thresholds = results / "thresholds.json"
    if thresholds.is_file():
        t = json.loads(thresholds.read_text())
        lines += ["Pseudo-label threshold on val (the adapted teacher labels the val split; the labels kept at each "
                  "fused-score threshold against val's ground truth):", "",
                  "| threshold | precision | recall | F1 | labels per image | mask AP |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['threshold']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {r['per_image']:.2f} | "
                  f"{r['mask_AP']:.1f} |" for r in t["rows"]]
        lines += ["", f"Best F1 on val at threshold {t['best_f1_threshold']}.", ""]
    (results / "budgets.json").write_text(json.dumps(budgets, indent=1))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--finetune", type=int, default=800)
    parser.add_argument("--selftrain", type=int, default=1600)
    parser.add_argument("--distill", type=int, default=6000)
    parser.add_argument("--refine", type=int, default=1200)
    parser.add_argument("--eval-every", type=int, default=250, help="students")
    parser.add_argument("--teacher-eval-every", type=int, default=100)
    parser.add_argument("--refine-eval-every", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "runs" / "learning_curves"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    results = REPO / "results" / "learning_curves" / f"seed{args.seed}"
    if not args.report_only:
        run_pipeline(args, results)
        thresholds_on_val(args, results)
    text = report(args, results)
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('learning_curves', text)}")


if __name__ == "__main__":
    main()
