"""The ablation tables from the steps' folders: per row the mean ± std over seeds (sample std,
ddof=1) beside the paper's number, the paper's orderings checked on the means and seed by seed,
one CSV and one PNG per table, all in one Markdown file."""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from sskd_ray import storage
from sskd_ray.eval.plots import pyplot, save_figure
from sskd_ray.tune.ablation_plan import TITLES, Plan

METRICS = ("mask_AP", "mask_AP50")
DIAGNOSTICS = ("false_negative_rate", "instance_margin")  # Table 4, from the distillation's history
# the orderings the paper reports ("a > b"), by row name (Table 6's are made per fraction)
ORDERINGS = {
    1: [("Self-training with L_con (ours)", "Self-training without L_con"),
        ("Self-training without L_con", "Fine-tuned on labeled only"), ("Fine-tuned on labeled only", "Zero-shot teacher")],
    2: [("L_sup + L_pl + L_con", "L_sup + L_pl"), ("L_sup + L_pl + L_con", "L_sup + L_con"),
        ("L_sup + L_pl", "L_sup + L_con"), ("L_sup + L_con", "L_sup")],
    3: [("Full three stages", "No student refinement (adapted teacher, distill)"),
        ("No student refinement (adapted teacher, distill)", "No teacher adaptation (zero-shot teacher, distill + refine)"),
        ("Full three stages", "Fine-tuned-only teacher (no self-training, distill + refine)"),
        ("No teacher adaptation (zero-shot teacher, distill + refine)", "Distillation only (zero-shot teacher, no refinement)"),
        ("Distillation only (zero-shot teacher, no refinement)", "Supervised only (no distillation)")],
    4: [("Fusion (ours)", "Uniform"), ("Fusion (ours)", "Mask-only"), ("Fusion (ours)", "Class-only")],
    12: [("Teacher T2 (adapted)", "Teacher T1 (zero-shot)"), ("Student under T2", "Student under T1")],
}


def mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    """-> (mean, sample std with ddof=1 (None for one value), n) of the finite values."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None, None, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None, len(values)


def diagnostics(history: list[dict]) -> dict:
    """False-negative rate averaged over training; the instance margin at the end (it should grow)."""
    fnr = [r["false_negative_rate"] for r in history if r.get("false_negative_rate") is not None]
    margin = [r["instance_margin"] for r in history if r.get("instance_margin") is not None]
    return {"false_negative_rate": float(np.mean(fnr)) if fnr else None, "instance_margin": margin[-1] if margin else None}


def measure(plan: Plan, folder) -> dict[str, dict]:
    """step key -> its mask AP / AP50 (and Table 4's diagnostics), for every finished step a row reads."""
    out = {}
    for key in {r.step for r in plan.rows}:
        path = storage.join(folder(plan.steps[key]), "metrics.json")
        if not storage.is_file(path):
            continue
        metrics = storage.read_json(path)
        out[key] = {k: metrics.get(k) for k in METRICS}
        history = storage.join(folder(plan.steps[key]), "history.json")
        if storage.is_file(history):
            out[key].update(diagnostics(storage.read_json(history)))
    return out


def row_id(label: str, column: str) -> str:
    return f"{label} @ {column}" if column else label


def table_rows(plan: Plan, measured: dict[str, dict]) -> list[dict]:
    """One dict per (table, row): the paper's AP / AP50 and mean / std / n of each measured value."""
    rows: dict[tuple, dict] = {}
    for r in plan.rows:
        entry = rows.setdefault((r.table, row_id(r.label, r.column)), {
            "table": r.table, "row": r.label, "fraction": r.column, "paper_AP": r.paper[0], "paper_AP50": r.paper[1],
            "seeds": [], "values": {}})
        entry["seeds"].append(r.seed)
        for name, value in measured.get(r.step, {}).items():
            entry["values"].setdefault(name, {})[r.seed] = value
    out = []
    for entry in rows.values():
        values = entry.pop("values")
        for name in METRICS + (DIAGNOSTICS if entry["table"] == 4 else ()):
            entry[f"{name}_mean"], entry[f"{name}_std"], entry["n"] = mean_std(list(values.get(name, {}).values()))
        entry["per_seed"] = {s: values.get("mask_AP", {}).get(s) for s in entry["seeds"]}
        out.append(entry)
    return out


def orderings(table: int, rows: list[dict]) -> list[dict]:
    """The paper's orderings for a table: whether each holds on the mean mask AP and in how many seeds."""
    pairs = ORDERINGS.get(table, [])
    if table == 6:
        columns = sorted({r["fraction"] for r in rows if r["table"] == 6}, key=float)
        pairs = [(row_id("Full method", c), row_id("Supervised only", c)) for c in columns]
        pairs += [(row_id("Full method", hi), row_id("Full method", lo)) for lo, hi in zip(columns, columns[1:])]
    by_id = {row_id(r["row"], r["fraction"]): r for r in rows if r["table"] == table}
    out = []
    for a, b in pairs:
        if a not in by_id or b not in by_id or by_id[a]["mask_AP_mean"] is None or by_id[b]["mask_AP_mean"] is None:
            continue
        seeds = [s for s in by_id[a]["per_seed"] if by_id[a]["per_seed"][s] is not None and by_id[b]["per_seed"].get(s) is not None]
        wins = sum(by_id[a]["per_seed"][s] > by_id[b]["per_seed"][s] for s in seeds)
        out.append({"better": a, "worse": b, "holds": by_id[a]["mask_AP_mean"] > by_id[b]["mask_AP_mean"],
                    "gap": by_id[a]["mask_AP_mean"] - by_id[b]["mask_AP_mean"], "seeds_holding": wins, "seeds": len(seeds)})
    return out


def _cell(mean, std, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _paper(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def table_markdown(table: int, rows: list[dict], png: str) -> str:
    mine = [r for r in rows if r["table"] == table]
    diag = table == 4
    head = "| row | " + ("fraction | " if table == 6 else "") + "mask AP | paper AP | mask AP50 | paper AP50 | " \
        + ("FNR | margin | " if diag else "") + "seeds |"
    lines = [f"## {TITLES[table]}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in mine:
        cells = [r["row"]] + ([r["fraction"]] if table == 6 else [])
        cells += [_cell(r["mask_AP_mean"], r["mask_AP_std"]), _paper(r["paper_AP"]),
                  _cell(r["mask_AP50_mean"], r["mask_AP50_std"]), _paper(r["paper_AP50"])]
        if diag:
            cells += [_cell(r["false_negative_rate_mean"], r["false_negative_rate_std"], 3),
                      _cell(r["instance_margin_mean"], r["instance_margin_std"], 3)]
        lines.append("| " + " | ".join(cells + [str(r["n"])]) + " |")
    lines.append("")
    for o in orderings(table, rows):
        verdict = "holds" if o["holds"] else "does NOT hold" + (" (a tie)" if o["gap"] == 0 else "")
        lines.append(f"- {o['better']} > {o['worse']}: {verdict} (mean gap {o['gap']:+.2f} AP; "
                     f"in {o['seeds_holding']} of {o['seeds']} seeds)")
    lines += ["", f"![table {table}]({png})", ""]
    return "\n".join(lines)


def plot_table(table: int, rows: list[dict], path: str) -> str:
    """Mean mask AP per row with its std over seeds, the paper's number as a hollow marker."""
    plt = pyplot()
    mine = [r for r in rows if r["table"] == table]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(mine) + 1.4), dpi=120)
    ys = np.arange(len(mine))[::-1]
    means = [r["mask_AP_mean"] if r["mask_AP_mean"] is not None else np.nan for r in mine]
    ax.barh(ys, means, xerr=[r["mask_AP_std"] or 0 for r in mine], color="#4c72b0", capsize=3, label="measured (mean ± std)")
    paper = [(y, r["paper_AP"]) for y, r in zip(ys, mine) if r["paper_AP"] is not None]
    if paper:
        ax.scatter([p for _, p in paper], [y for y, _ in paper], facecolors="none", edgecolors="#c44e52", zorder=3,
                   label="paper (Cityscapes 10 %)")
    ax.set_yticks(ys, [row_id(r["row"], r["fraction"]) for r in mine], fontsize=7)
    ax.set_xlabel("val mask AP (%)")
    ax.set_title(TITLES[table], fontsize=9, pad=18)
    ax.grid(axis="x", alpha=0.3)
    # above the bars, not over them: inside the axes it hid the paper's marker of a bottom row
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False, borderaxespad=0.2)
    fig.tight_layout()
    return save_figure(fig, path)


def write_table_csv(table: int, rows: list[dict], path: str) -> str:
    fields = ["row", "fraction", "paper_AP", "paper_AP50"] + [f"{m}_{s}" for m in METRICS + DIAGNOSTICS
                                                            for s in ("mean", "std")] + ["n"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows([r for r in rows if r["table"] == table])
    return storage.write_text(path, text.getvalue())


NOTES = """How the rows are made (sskd_ray/tune/ablation_plan.py):
- Table 2 switches terms of the student's distillation objective only; the teacher is the adapted
  one for every row (the paper's Table 2 also lists a teacher column, 28.7 / 29.7 / 29.6 / 30.5,
  which suggests it switched them in teacher adaptation too). "L_sup + L_con" keeps the pool in
  the batches with alpha = 0, so L_con still sees labeled and unlabeled images (Eq. 3).
- Table 3 follows the paper's check marks: "distillation only" and "no teacher adaptation" distill
  from the zero-shot teacher (its 23.8 is Table 12's student under T1); the row distilling from the
  fine-tuned-only teacher is the supplement's Sec. 10.2 (student 32.0).
- Table 4's rows other than fusion were an image in the paper text we have: no number for them.
  FNR is the false-negative rate averaged over the distillation run, margin the instance margin at
  its end (both measured on labeled images, from the stage's history).
- Table 6: the paper reports 5 / 10 / 30 % (30.7 / 33.9 / 40.4) and the supervised baseline at
  10 % only (21.1); supervised-only and full students get the same total iterations.
- Orderings are the paper's claims, checked on the mean mask AP and seed by seed.
"""


def write_report(plan: Plan, folder, md_path: str, header: str) -> list[str]:
    """`md_path` (the tables, orderings and plots) and, in the folder `ablations/` beside it, one
    table<N>.csv and table<N>.png per table; -> the files written."""
    rows = table_rows(plan, measure(plan, folder))
    assets = storage.join(storage.parent(md_path), "ablations")
    parts, written = [header, "", NOTES], []
    for table in sorted({r["table"] for r in rows}):
        written.append(write_table_csv(table, rows, storage.join(assets, f"table{table}.csv")))
        written.append(plot_table(table, rows, storage.join(assets, f"table{table}.png")))
        parts.append(table_markdown(table, rows, f"ablations/table{table}.png"))
    written.append(storage.write_text(md_path, "\n".join(parts)))
    return written
