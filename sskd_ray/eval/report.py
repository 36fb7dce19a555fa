"""`<run_dir>/report.md`: the run's one-page summary (stage table, curves) and the printed table."""
from __future__ import annotations

import time

import torch

from sskd_ray import storage
from sskd_ray.data.coco import load_coco
from sskd_ray.eval.efficiency import compare_latency, count_flops
from sskd_ray.eval.overlays import draw_overlay
from sskd_ray.eval.plots import plot_stages, pyplot, save_figure
from sskd_ray.models.checkpoint import is_trained_folder
from sskd_ray.models.inference import read_image
from sskd_ray.models.maskformer import count_parameters
from sskd_ray.models.postprocess import Instance
from sskd_ray.models.pretrained import TrainedModel
from sskd_ray.redaction import redact


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt2(value) -> str:
    """Two decimals, or "-" for a missing value (rates, per-image counts)."""
    return "-" if value is None else f"{value:.2f}"


def reported_split(results: dict[str, dict]) -> str:
    """"test" when the run has a test split (every reported number reads it), else "val"."""
    return "test" if any("test_mask_AP" in m for m in results.values()) else "val"


def format_table(results: dict[str, dict], rows: tuple[tuple[str, str], ...]) -> str:
    """Markdown table: one row per model, mask AP and AP50 per class and class-agnostic on the test split
    (val when the run has none), and val mask AP beside it (the split choices were made on)."""
    split = reported_split(results)
    p = "test_" if split == "test" else ""
    lines = [f"| model | {split} mask AP | {split} mask AP50 | {split} class-agnostic AP | "
             f"{split} class-agnostic AP50 |" + (" val mask AP |" if p else "") + " iterations | wall (s) |",
             "|---|---:|---:|---:|---:|" + ("---:|" if p else "") + "---:|---:|"]
    for key, label in rows:
        m = results.get(key)
        if m is None:
            continue
        lines.append(f"| {label} | {_fmt(m.get(p + 'mask_AP'))} | {_fmt(m.get(p + 'mask_AP50'))} | "
                     f"{_fmt(m.get(p + 'mask_AP_agnostic'))} | {_fmt(m.get(p + 'mask_AP50_agnostic'))} | "
                     + (f"{_fmt(m.get('mask_AP'))} | " if p else "")
                     + f"{m.get('iterations', '-')} | {m.get('wall_seconds', '-')} |")
    return "\n".join(lines)


def efficiency_table(models: dict[str, str], rounds: int = 20) -> tuple[str, dict]:
    """Parameters, FLOPs and CPU latency (batch 1, the models timed in alternation over `rounds`
    rounds after a warm-up) of trained models, from their final/ folders."""
    loaded, images = {}, {}
    for name, folder in models.items():
        if is_trained_folder(folder):
            trained = TrainedModel.from_pretrained(folder)
            size = trained.card.model.image_size
            loaded[name], images[name] = trained.model.eval(), torch.rand(1, 3, size, size)
    latency = compare_latency(loaded, images, rounds=rounds)
    stats = {name: {"params": count_parameters(m), "flops": count_flops(m, images[name]), "latency_ms": latency[name],
                    "image_size": list(images[name].shape[-2:])} for name, m in loaded.items()}
    lines = [f"| model | parameters | GFLOPs (one image) | input | latency, CPU batch 1 ({torch.get_num_threads()} threads, "
             f"median of {rounds} alternating rounds) |", "|---|---:|---:|---:|---:|"]
    for name, e in stats.items():
        lines.append(f"| {name} | {e['params'] / 1e6:.2f} M | {e['flops'] / 1e9:.2f} | {e['image_size'][0]} px | "
                     f"{e['latency_ms']:.0f} ms |")
    return "\n".join(lines), stats


def prediction_grid(val_json: str, models: dict[str, str], path: str, count: int = 4) -> str:
    """Rows: val images; columns: ground truth, then each model's predictions (score >= 0.3)."""
    plt = pyplot()
    val = load_coco(val_json, check_files=False)
    shown, arrays = [], []
    for im in val.images[:count]:
        array, _ = read_image(val.image_path(im))
        if array is not None:
            shown.append(im)
            arrays.append(array)
    columns = {"ground truth": []}
    for im, array in zip(shown, arrays):
        masks, labels = val.instance_masks(im)
        columns["ground truth"].append(draw_overlay(array, [Instance(int(c), 1.0, m) for m, c in zip(masks, labels)],
                                                    val.class_names))
    for name, folder in models.items():
        if is_trained_folder(folder):
            trained = TrainedModel.from_pretrained(folder)
            found = trained.predict(arrays, threshold=0.3, top_k=20)
            columns[name] = [draw_overlay(array, insts, trained.class_names) for array, insts in zip(arrays, found)]
    fig, axes = plt.subplots(len(shown), len(columns), figsize=(3.2 * len(columns), 3.2 * len(shown)), dpi=110,
                             squeeze=False)
    for c, (name, overlays) in enumerate(columns.items()):
        for r, overlay in enumerate(overlays):
            axes[r, c].imshow(overlay)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def pseudo_label_section(run_dir: str) -> list[str]:
    """Report lines: one table row per labeling pass (pseudo/<pass>/summary.json): counts, instances per
    image against ground truth per image, precision / recall and mask AP of the pseudo-labels (quality
    numbers only where the pool has ground truth); [] before any pass."""
    rows, plots = [], []
    for name in ("finetune", "adapted"):
        summary = storage.join(run_dir, "pseudo", name, "summary.json")
        if storage.is_file(summary):
            s = storage.read_json(summary)
            q = s.get("quality", {})
            rows.append(f"| {name} teacher | {s['images_labeled']} | {s['images_skipped']} | {s['instances']} | "
                        f"{fmt2(q.get('instances_per_image'))} | {fmt2(q.get('gt_per_image'))} | "
                        f"{fmt2(q.get('precision'))} | {fmt2(q.get('recall'))} | "
                        f"{_fmt(q.get('mask_AP'))} | {_fmt(q.get('mask_AP50'))} |")
        if storage.is_file(storage.join(run_dir, "pseudo", name, "scores.png")):
            plots.append(f"![{name}](pseudo/{name}/scores.png)")
    if not rows:
        return []
    return ["## Pseudo-labels (quality measured against the pool's held-back ground truth, when it has any)", "",
            "| labeled by | images | skipped | instances | per image | ground truth per image | precision | recall | "
            "mask AP | mask AP50 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
            "Precision and recall: kept pseudo-labels matched one-to-one to ground truth of their class at mask "
            "IoU >= 0.5, greedily by score (`sskd_ray/eval/pseudo_quality.py`).", "",
            *(["Score histograms: " + ", ".join(plots), ""] if plots else [])]


def write_report(run_dir: str, results: dict[str, dict], rows: tuple[tuple[str, str], ...], specs: dict) -> str:
    run_dir = storage.normalize(run_dir)

    def at(*parts: str) -> str:
        return storage.join(run_dir, *parts)

    histories = {}
    for name, spec in specs.items():
        path = storage.join(spec.folder, "history.json")
        if storage.is_file(path):
            histories[name] = storage.read_json(path)
    plot_stages(histories, at("losses.png"))
    table = format_table(results, rows)
    text = [f"# sskd-ray run `{storage.name(run_dir)}`", "", f"Written {time.strftime('%Y-%m-%d %H:%M')}; config in `config.yaml`.",
            "", f"## Mask AP on the {reported_split(results)} split", "", table, "", *pseudo_label_section(run_dir)]
    models = {"teacher (adapted)": at("teacher", "selftrain", "final"), "student (final)": at("student", "final"),
              "student (supervised only)": at("student", "baseline", "final")}
    table_eff, _ = efficiency_table({k: v for k, v in models.items() if "supervised" not in k})
    text += ["## Efficiency (the trained models of this run)", "", table_eff, ""]
    val_json = next(iter(specs.values())).inputs.val_json if specs else ""
    if val_json:
        prediction_grid(val_json, models, at("predictions.png"))
        text += ["## Predictions on val images (score >= 0.3)", "", "![predictions](predictions.png)", ""]
    text += ["## Training curves", "", "![losses](losses.png)", ""]
    text += [f"- {name}: ![{name}]({storage.relative_to(spec.folder, run_dir)}/losses.png)"
             for name, spec in specs.items() if storage.is_file(storage.join(spec.folder, "losses.png"))]
    path = storage.write_text(at("report.md"), redact("\n".join(text) + "\n"))  # no URI secrets on disk
    print(redact("\n" + table + f"\n\nreport: {path}"))
    return path
