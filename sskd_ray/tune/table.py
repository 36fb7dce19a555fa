"""Sensitivity tables laid out like the paper's Table 8: per swept factor, rows teacher/student x
mask AP/AP50, columns the factor's values, cells mean ± std over seeds; CSV, Markdown and a PNG per factor."""
from __future__ import annotations

import csv
import io

import numpy as np

from sskd_ray import storage
from sskd_ray.config import Config, flatten_config
from sskd_ray.eval.plots import pyplot, save_figure
from sskd_ray.tune.spaces import SweepSpace, Trial, trial_for

ROWS = (("teacher", "mask_AP"), ("teacher", "mask_AP50"), ("student", "mask_AP"), ("student", "mask_AP50"))


def _results(run_dir: str) -> dict[str, dict]:
    found = storage.list_files(storage.join(run_dir, "trials"), "result.json", recursive=True)
    return {storage.name(storage.parent(p)): storage.read_json(p) for p in found}


def _cell(values: list[float]) -> tuple[float | None, float | None, int]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0, len(values)


def sensitivity_rows(space: SweepSpace, base: dict, results: dict[str, dict]) -> list[dict]:
    """[{factor, value, role, metric, mean, std, n}] for every factor value and measured role."""
    rows = []
    for factor, values in space.factors.items():
        for value in values:
            keys = [trial_for(space, base, factor, value, seed).key for seed in space.seeds]
            for role, metric in ROWS:
                mean, std, n = _cell([results[k].get(f"{role}_{metric}") for k in keys if k in results])
                if n:
                    rows.append({"factor": factor, "value": value, "role": role, "metric": metric,
                                 "mean": mean, "std": std, "n": n})
    return rows


def _markdown(space: SweepSpace, rows: list[dict]) -> str:
    lines = [f"# Sensitivity: `{space.path.name}`", "",
             f"Stages per trial: {' -> '.join(space.stages)}; seeds {space.seeds}; mean ± std over seeds (n).", ""]
    for factor, values in space.factors.items():
        head = "| | " + " | ".join(f"{factor.split('.')[-1]} = {v}" for v in values) + " |"
        lines += [f"## {factor}", "", head, "|---|" + "---:|" * len(values)]
        for role, metric in ROWS:
            cells = []
            for v in values:
                match = [r for r in rows if r["factor"] == factor and r["value"] == v and r["role"] == role
                         and r["metric"] == metric]
                cells.append(f"{match[0]['mean']:.1f} ± {match[0]['std']:.1f} ({match[0]['n']})" if match else "-")
            if any(c != "-" for c in cells):
                lines.append(f"| {role} {metric.replace('mask_', 'mask ')} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _search_markdown(space: SweepSpace, trials: list[Trial], results: dict[str, dict]) -> str:
    lines = [f"# Search: `{space.path.name}`", "", "| point | seed | teacher AP | student AP | student AP50 |",
             "|---|---:|---:|---:|---:|"]
    done = [(t, results[t.key]) for t in trials if t.key in results]
    done.sort(key=lambda tr: -(tr[1].get("student_mask_AP") or tr[1].get("teacher_mask_AP") or 0))
    for t, r in done:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| `{t.value}` | {t.seed} | {fmt(r.get('teacher_mask_AP'))} | {fmt(r.get('student_mask_AP'))} | "
                     f"{fmt(r.get('student_mask_AP50'))} |")
    return "\n".join(lines) + "\n"


def _plot(factor: str, values: list, rows: list[dict], path: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    xs = list(range(len(values)))
    for (role, metric), style in zip(ROWS, ("o-", "o--", "s-", "s--")):
        pts = [[r for r in rows if r["factor"] == factor and r["value"] == v and r["role"] == role
                and r["metric"] == metric] for v in values]
        if not any(pts):
            continue
        ys = [p[0]["mean"] if p else np.nan for p in pts]
        es = [p[0]["std"] if p else 0 for p in pts]
        ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=f"{role} {metric.replace('mask_', '')}")
    ax.set_xticks(xs, [str(v) for v in values])
    ax.set_xlabel(factor)
    ax.set_ylabel("val mask AP (%)")
    ax.set_title(f"sensitivity to {factor.split('.')[-1]}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def write_tables(space: SweepSpace, trials: list[Trial], base_cfg: Config, run_dir: str) -> list[str]:
    """-> the files written: sensitivity.csv / .md (+ one PNG per factor), or search.md."""
    results = _results(run_dir)
    if space.search:
        text = _search_markdown(space, trials, results)
        print(text)
        return [storage.write_text(storage.join(run_dir, "search.md"), text)]
    rows = sensitivity_rows(space, flatten_config(base_cfg), results)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, ["factor", "value", "role", "metric", "mean", "std", "n"])
    writer.writeheader()
    writer.writerows(rows)
    csv_path = storage.write_text(storage.join(run_dir, "sensitivity.csv"), table.getvalue())
    text = _markdown(space, rows)
    names = {f: f"sensitivity_{f.split('.')[-1]}" for f in space.factors}
    plots = [_plot(f, v, rows, storage.join(run_dir, f"{names[f]}.png")) for f, v in space.factors.items()]
    text += "\n" + "\n".join(f"![{name}]({name}.png)" for name in names.values()) + "\n"
    md_path = storage.write_text(storage.join(run_dir, "sensitivity.md"), text)
    print(text)
    return [csv_path, md_path, *plots]
