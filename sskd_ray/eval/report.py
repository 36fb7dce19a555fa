"""`<run_dir>/report.md`: the run's one-page summary (stage table, curves) and the printed table."""
from __future__ import annotations

import json
import time
from pathlib import Path

from sskd_ray.eval.plots import plot_stages


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(results: dict[str, dict], rows: tuple[tuple[str, str], ...]) -> str:
    """Markdown table: one row per model, mask AP and AP50 on the val split."""
    lines = ["| model | mask AP | mask AP50 | iterations | wall (s) |", "|---|---:|---:|---:|---:|"]
    for key, label in rows:
        m = results.get(key)
        if m is None:
            continue
        lines.append(f"| {label} | {_fmt(m.get('mask_AP'))} | {_fmt(m.get('mask_AP50'))} | "
                     f"{m.get('iterations', '-')} | {m.get('wall_seconds', '-')} |")
    return "\n".join(lines)


def write_report(run_dir: Path, results: dict[str, dict], rows: tuple[tuple[str, str], ...], specs: dict) -> Path:
    histories = {}
    for name, spec in specs.items():
        path = Path(spec.folder) / "history.json"
        if path.is_file():
            histories[name] = json.loads(path.read_text())
    plot_stages(histories, run_dir / "losses.png")
    table = format_table(results, rows)
    pseudo = []
    for name in ("finetune", "adapted"):
        summary = run_dir / "pseudo" / name / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            q = s.get("quality", {})
            pseudo.append(f"| {name} teacher | {s['images_labeled']} | {s['images_skipped']} | {s['instances']} | "
                          f"{_fmt(q.get('mask_AP'))} | {_fmt(q.get('mask_AP50'))} |")
    text = [f"# sskd-ray run `{run_dir.name}`", "", f"Written {time.strftime('%Y-%m-%d %H:%M')}; config in `config.yaml`.",
            "", "## Mask AP on the val split", "", table, ""]
    if pseudo:
        text += ["## Pseudo-labels (quality measured against the pool's held-back ground truth, when it has any)", "",
                 "| labeled by | images | skipped | instances | mask AP | mask AP50 |", "|---|---:|---:|---:|---:|---:|",
                 *pseudo, ""]
    text += ["## Training curves", "", "![losses](losses.png)", ""]
    text += [f"- {name}: ![{name}]({Path(spec.folder).relative_to(run_dir)}/losses.png)" for name, spec in specs.items()
             if (Path(spec.folder) / "losses.png").is_file()]
    path = run_dir / "report.md"
    path.write_text("\n".join(text) + "\n")
    print("\n" + table + f"\n\nreport: {path}")
    return path
