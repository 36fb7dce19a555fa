"""The method's ladder on the built-in benchmark over seeds, from small result files in the repo.

    python -m bench.method_gain --study [--seeds 0 1 2 3 4] # the study: configs/default.yaml + configs/study.yaml
    python -m bench.method_gain --seeds 0                    # the demo's one-seed preview (configs/default.yaml)
    python -m bench.method_gain --study --report-only        # tables, plot and docs from results/ alone

Each seed is one `jobs/full_pipeline.py --config <configs> --run-dir <out>/<name>/seed<s> --results
results/<name>/seed<s> seed=<s>` run (the data and its labeled split stay the same; the seed changes
every random draw of training and labeling). Every finished step leaves results/<name>/seed<s>/<step>.json
(config digest, seed, metrics); a seed whose files all carry the current config's digest is not run
again, on this machine or another, and `--report-only` renders everything from those files.

Reported: TEST mask AP (val was for the choices), mean ± standard error over seeds, per-seed values,
and the paired differences the method's claims are about (the same seed's split and teacher for the
rows it compares) with their standard error; a difference "holds" when its mean exceeds twice its
standard error, is "missed" when it is below minus that, and is "not resolved" in between, where 2
s.e. is the smallest difference these seeds can resolve. Writes results/<name>/summary.json,
docs/<name>.png and the "<name>" section of docs/benchmarks.md (the study also the README's table).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from bench.benchmarks_doc import write_section
from sskd_ray.config import load_config
from sskd_ray.eval.plots import pyplot, save_figure
from sskd_ray.train.pipeline import result_digest

REPO = Path(__file__).resolve().parents[1]

STAGES = (("teacher_initial", "teacher before adaptation (zero-shot)"),
          ("teacher_finetune", "teacher fine-tuned on labeled"),
          ("teacher_selftrain", "teacher adapted (self-trained + L_con)"),
          ("baseline", "student, supervised only"),
          ("distill", "student after transfer (distilled)"),
          ("refine", "student after refinement"))
STEPS = tuple(name for name, _ in STAGES) + ("label_finetune", "label_adapted")
# (claim, minuend, subtrahend, factor on the subtrahend): each seed's difference minuend - factor x subtrahend
CLAIMS = (("teacher: fine-tuned > zero-shot", "teacher_finetune", "teacher_initial", 1.0),
          ("teacher: adapted > fine-tuned", "teacher_selftrain", "teacher_finetune", 1.0),
          ("student: distilled > supervised-only", "distill", "baseline", 1.0),
          ("student: refined > distilled", "refine", "distill", 1.0),
          ("student: refined > supervised-only", "refine", "baseline", 1.0),
          ("student: refined >= 0.9 x adapted teacher", "refine", "teacher_selftrain", 0.9),
          ("stretch: student refined > adapted teacher", "refine", "teacher_selftrain", 1.0))


def config_files(study: bool) -> list[str]:
    files = [str(REPO / "configs" / "default.yaml")]
    return files + [str(REPO / "configs" / "study.yaml")] if study else files


def seed_folder(name: str, seed: int) -> Path:
    return REPO / "results" / name / f"seed{seed}"


def finished(folder: Path, digest: str) -> bool:
    """Every step of the seed has its result file, made with this config."""
    records = [folder / f"{step}.json" for step in STEPS]
    return all(p.is_file() and json.loads(p.read_text())["config_digest"] == digest for p in records)


def run_seed(files: list[str], name: str, seed: int, out: Path, overrides: list[str]) -> None:
    """One pipeline run (resumed where its run folder holds finished stages); its wall time goes into
    the seed's wall.json when this call ran it from the start."""
    folder = seed_folder(name, seed)
    cmd = [sys.executable, str(REPO / "jobs" / "full_pipeline.py"), *[a for f in files for a in ("--config", f)],
           "--run-dir", str(out / name / f"seed{seed}"), "--results", str(folder), f"seed={seed}", *overrides]
    print(" ".join(cmd), flush=True)
    fresh = not any(folder.glob("*.json"))
    began = time.time()
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True)
    wall = {"seconds": round(time.time() - began, 1), "from_start": fresh, "machine": machine()}
    (folder / "wall.json").write_text(json.dumps(wall, indent=1))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores"


def read_seed(folder: Path) -> dict:
    return {step: json.loads((folder / f"{step}.json").read_text())["metrics"] for step in STEPS}


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def verdict(mean: float, se: float, seeds: int) -> str:
    """holds / missed when the mean is more than 2 standard errors above / below 0, else not resolved."""
    if seeds < 2:
        return "one seed: not resolved"
    return "holds" if mean > 2 * se else ("missed" if mean < -2 * se else "not resolved")


def tables(per_seed: dict[int, dict], split: str = "test") -> tuple[str, dict]:
    p = "test_" if split == "test" else ""
    seeds = sorted(per_seed)
    lines = [f"| model | {split} mask AP | {split} mask AP50 | {split} class-agnostic AP | val mask AP | {split} AP per seed |",
             "|---|---:|---:|---:|---:|---|"]
    summary = {"stages": {}, "claims": {}}
    for name, label in STAGES:
        col = {k: [per_seed[s][name].get(k, float("nan")) for s in seeds]
               for k in (p + "mask_AP", p + "mask_AP50", p + "mask_AP_agnostic", "mask_AP")}
        cells = {k: mean_se(v) for k, v in col.items()}
        summary["stages"][name] = {k: {"mean": m, "se": e, "per_seed": col[k]} for k, (m, e) in cells.items()}
        fmt = lambda k: f"{cells[k][0]:.1f} ± {cells[k][1]:.1f}"  # noqa: E731
        lines.append(f"| {label} | {fmt(p + 'mask_AP')} | {fmt(p + 'mask_AP50')} | {fmt(p + 'mask_AP_agnostic')} | "
                     f"{fmt('mask_AP')} | {' / '.join(f'{v:.1f}' for v in col[p + 'mask_AP'])} |")
    lines += ["", f"| paired difference ({split} mask AP, same seed) | mean ± s.e. | smallest resolvable (2 s.e.) | "
              "verdict | per seed |", "|---|---:|---:|---|---|"]
    for claim, a, b, factor in CLAIMS:
        diffs = [per_seed[s][a][p + "mask_AP"] - factor * per_seed[s][b][p + "mask_AP"] for s in seeds]
        m, e = mean_se(diffs)
        summary["claims"][claim] = {"mean": m, "se": e, "per_seed": diffs, "verdict": verdict(m, e, len(seeds))}
        lines.append(f"| {claim} | {m:+.2f} ± {e:.2f} | {2 * e:.2f} | {verdict(m, e, len(seeds))} | "
                     f"{' / '.join(f'{d:+.1f}' for d in diffs)} |")
    passes = [(s, n, per_seed[s][f"label_{n}"]) for s in seeds for n in ("finetune", "adapted")]
    keys = ("quality_precision", "quality_recall", "quality_mask_AP", "quality_instances_per_image")
    lines += ["", "| seed | labeling pass | precision | recall | mask AP vs the pool's ground truth | labels per image |",
              "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {s} | {n} | " + " | ".join(f"{q.get(k, float('nan')):.2f}" for k in keys) + " |" for s, n, q in passes]
    return "\n".join(lines), summary


def plot(per_seed: dict[int, dict], summary: dict, path: Path, title: str, split: str = "test") -> str:
    plt = pyplot()
    p = "test_" if split == "test" else ""
    seeds = sorted(per_seed)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1.1, 1]})
    for i, (name, label) in enumerate(STAGES):
        values = [per_seed[s][name][p + "mask_AP"] for s in seeds]
        m, e = mean_se(values)
        ax.bar(i, m, yerr=e, color="#4c72b0" if name.startswith("teacher") else "#55a868", alpha=0.7, capsize=4)
        ax.scatter([i] * len(values), values, color="#222222", s=10, zorder=3)
    ax.set_xticks(range(len(STAGES)), [textwrap.fill(label, 16) for _, label in STAGES], fontsize=7)
    ax.set_ylabel(f"{split} mask AP")
    ax.set_title(f"{title}: {len(seeds)} seeds (bars: mean ± s.e., dots: seeds)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    claims = list(summary["claims"].items())
    for j, (claim, c) in enumerate(claims):
        colour = {"holds": "#55a868", "missed": "#c44e52"}.get(c["verdict"], "#8c8c8c")
        bx.errorbar(c["mean"], j, xerr=2 * c["se"], fmt="o", color=colour, capsize=4)
        bx.scatter(c["per_seed"], [j] * len(c["per_seed"]), color="#222222", s=8, zorder=3)
    bx.axvline(0, color="#444444", linewidth=0.8)
    bx.set_yticks(range(len(claims)), [textwrap.fill(c, 34) for c, _ in claims], fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel(f"paired difference, {split} mask AP (± 2 s.e.)")
    bx.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", action="store_true", help="configs/study.yaml on top of the demo config")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0-4 (--study), 0 (demo)")
    parser.add_argument("--out", default=str(REPO / "runs" / "method_gain"), help="run folders (not committed)")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/")
    parser.add_argument("--report-only", action="store_true", help="run nothing: render from results/")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for every seed")
    args = parser.parse_args()
    name = "study" if args.study else "demo"
    seeds = args.seeds if args.seeds is not None else ([0, 1, 2, 3, 4] if args.study else [0])
    files = config_files(args.study)
    for seed in seeds:
        digest = result_digest(load_config(files, [f"seed={seed}", *args.overrides]))
        if finished(seed_folder(name, seed), digest):
            print(f"seed {seed}: every step has its result file for this config ({digest}): not run", flush=True)
        elif args.report_only:
            raise SystemExit(f"seed {seed}: results/{name}/seed{seed} is incomplete or from another config; run without --report-only")
        else:
            run_seed(files, name, seed, Path(args.out), args.overrides)
    per_seed = {s: read_seed(seed_folder(name, s)) for s in seeds}
    text, summary = tables(per_seed)
    walls = {s: json.loads(p.read_text()) for s in seeds if (p := seed_folder(name, s) / "wall.json").is_file()}
    summary.update({"seeds": seeds, "configs": [str(Path(f).relative_to(REPO)) for f in files], "wall": walls})
    (REPO / "results" / name / "summary.json").write_text(json.dumps(summary, indent=1))
    figure = plot(per_seed, summary, REPO / "docs" / f"{name}.png", "study" if args.study else "demo preview")
    command = " ".join(["python -m bench.method_gain", *(["--study"] if args.study else []), "--seeds", *map(str, seeds),
                        *args.overrides])
    total = sum(w["seconds"] for w in walls.values() if w.get("from_start"))
    per_seed_wall = "; ".join(f"seed {s}: {w['seconds'] / 60:.0f} min" for s, w in walls.items())
    started = sum(1 for w in walls.values() if w.get("from_start"))
    wall_text = (f"{total / 3600:.2f} h for {started} seeds run from the start ({per_seed_wall}, "
                 f"{next(iter(walls.values()))['machine']})") if walls else "wall time not recorded"
    header = (f"Command: `{command}` (configs: {', '.join(summary['configs'])}; results in `results/{name}/`, "
              f"rendered by the same command with `--report-only`). Wall: {wall_text}. Test split (500 scenes); "
              f"mean ± standard error over {len(seeds)} seeds; paired differences per seed.")
    print(text)
    if not args.no_doc:
        write_section(name if args.study else "method_gain", f"{header}\n\n{text}\n\n![{name}]({Path(figure).name})")
        print(f"wrote docs/benchmarks.md section '{name if args.study else 'method_gain'}' and {figure}")


if __name__ == "__main__":
    main()
