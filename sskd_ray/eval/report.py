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


def efficiency_table(models: dict[str, Path]) -> tuple[str, dict]:
    """Parameters, FLOPs and CPU latency (batch 1) of trained models, from their final/ folders."""
    import torch

    from sskd_ray.deploy.export import load_trained
    from sskd_ray.eval.efficiency import efficiency_report

    stats = {}
    for name, folder in models.items():
        if (Path(folder) / "model.pt").is_file():
            model, card = load_trained(folder)
            size = card["model"]["image_size"]
            with torch.no_grad():
                stats[name] = efficiency_report(model, (size, size), runs=3)
    lines = ["| model | parameters | GFLOPs (one image) | input | latency, CPU batch 1 |", "|---|---:|---:|---:|---:|"]
    for name, e in stats.items():
        lines.append(f"| {name} | {e['params'] / 1e6:.2f} M | {e['flops'] / 1e9:.2f} | {e['image_size'][0]} px | "
                     f"{e['latency_ms']:.0f} ms |")
    return "\n".join(lines), stats


def prediction_grid(val_json: str, models: dict[str, Path], path: Path, count: int = 4) -> Path:
    """Rows: val images; columns: ground truth, then each model's predictions (score >= 0.3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from PIL import Image

    from sskd_ray.data.coco import load_coco
    from sskd_ray.deploy.export import load_trained
    from sskd_ray.deploy.predict import predict_arrays, draw_overlay
    from sskd_ray.models.postprocess import Instance

    val = load_coco(val_json, check_files=False)
    images = [{"image_id": im["id"], "file_name": im["file_name"], "path": str(val.image_path(im)), "_im": im}
              for im in val.images[:count]]
    columns = {"ground truth": []}
    for im in images:
        masks, labels = val.instance_masks(im["_im"])
        with Image.open(im["path"]) as pil:
            array = np.asarray(pil.convert("RGB"))
        columns["ground truth"].append(draw_overlay(array, [Instance(int(c), 1.0, m) for m, c in zip(masks, labels)],
                                                    val.class_names))
    for name, folder in models.items():
        if not (Path(folder) / "model.pt").is_file():
            continue
        model, card = load_trained(folder)
        with torch.no_grad():
            done, _ = predict_arrays(model, card, [{k: v for k, v in im.items() if k != "_im"} for im in images], 8, 0.3, 20)
        columns[name] = [draw_overlay(array, insts, card["class_names"]) for _, array, insts in done]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(3.2 * len(columns), 3.2 * len(images)), dpi=110,
                             squeeze=False)
    for c, (name, overlays) in enumerate(columns.items()):
        for r, overlay in enumerate(overlays):
            axes[r, c].imshow(overlay)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
        text += ["Score histograms: " + ", ".join(f"![{n}](pseudo/{n}/scores.png)" for n in ("finetune", "adapted")
                                                 if (run_dir / "pseudo" / n / "scores.png").is_file()), ""]
    models = {"teacher (adapted)": run_dir / "teacher" / "selftrain" / "final",
              "student (final)": run_dir / "student" / "final",
              "student (supervised only)": run_dir / "student" / "baseline" / "final"}
    table_eff, _ = efficiency_table({k: v for k, v in models.items() if "supervised" not in k})
    text += ["## Efficiency (the trained models of this run)", "", table_eff, ""]
    val_json = next(iter(specs.values())).data["val_json"] if specs else ""
    if val_json:
        prediction_grid(val_json, models, run_dir / "predictions.png")
        text += ["## Predictions on val images (score >= 0.3)", "", "![predictions](predictions.png)", ""]
    text += ["## Training curves", "", "![losses](losses.png)", ""]
    text += [f"- {name}: ![{name}]({Path(spec.folder).relative_to(run_dir)}/losses.png)" for name, spec in specs.items()
             if (Path(spec.folder) / "losses.png").is_file()]
    path = run_dir / "report.md"
    path.write_text("\n".join(text) + "\n")
    print("\n" + table + f"\n\nreport: {path}")
    return path
