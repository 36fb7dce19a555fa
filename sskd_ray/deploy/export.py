"""A trained model's folder (sskd_ray.models.checkpoint, e.g. `<run_dir>/student/final`) -> TorchScript
and ONNX files with a parity check and a model card.

The deployed graph takes images in [0, 1], (B, 3, H, W) with H, W dynamic (checked at a 1:2 size),
and returns (mask_logits (B, N, H/4, W/4), class_logits (B, N, C + 1)); normalisation happens inside, post-processing (`instances_from_output`)
stays in Python so thresholds can change without re-exporting.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from sskd_ray import storage
from sskd_ray.data.resize import size_multiple
from sskd_ray.eval.efficiency import count_flops, measure_latency
from sskd_ray.models.checkpoint import load_trained
from sskd_ray.models.maskformer import count_parameters

OPSET = 18


class DeployModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.mask_logits, out.class_logits


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with torch.no_grad():
        traced = torch.jit.trace(DeployModel(model).eval(), example, check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> tuple[Path, list[str]]:
    """ONNX with dynamic batch, height and width axes, so images run at their own aspect ratio (the
    student's position encodings and attention masks are computed from the feature maps' shapes;
    `check_parity` verifies this at a non-square size). Returns the path and the dynamic axes."""
    torch.onnx.export(DeployModel(model).eval(), (example,), str(path), opset_version=OPSET, dynamo=False,
                      input_names=["images"], output_names=["mask_logits", "class_logits"],
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                    "mask_logits": {0: "batch", 2: "mask_height", 3: "mask_width"},
                                    "class_logits": {0: "batch"}})
    return path, ["batch", "height", "width"]


def _max_diff(a: torch.Tensor, b) -> float:
    return float((a - torch.as_tensor(b)).abs().max())


def check_parity(model: nn.Module, torchscript: Path, onnx: Path, images: torch.Tensor, atol: float = 1e-3) -> dict:
    """Max |exported - eager| per output on `images` (a batch size, or an image size, other than the
    export's, so the dynamic axes are exercised). onnxruntime is optional: when it cannot load, says why."""
    with torch.no_grad():
        eager = DeployModel(model).eval()(images)
        scripted = torch.jit.load(str(torchscript))(images)
    report = {"batch": images.shape[0], "atol": atol,
              "torchscript": {n: _max_diff(e, s) for n, e, s in zip(("mask_logits", "class_logits"), eager, scripted)}}
    try:
        import onnxruntime as ort
    except ImportError as err:
        report["onnx"] = {"skipped": f"onnxruntime not importable: {err}"}
    else:
        outs = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})
        report["onnx"] = {n: _max_diff(e, o) for n, e, o in zip(("mask_logits", "class_logits"), eager, outs)}
    report["ok"] = all(v <= atol for fmt in ("torchscript", "onnx") for v in report[fmt].values()
                       if isinstance(v, float))
    return report


def _latencies(model: nn.Module, torchscript: Path, onnx: Path, size: int, runs: int = 5) -> dict:
    x = torch.rand(1, 3, size, size)
    out = {"eager_ms": measure_latency(model, x, runs=runs),
           "torchscript_ms": measure_latency(torch.jit.load(str(torchscript)), x, runs=runs)}
    try:
        import onnxruntime as ort  # optional (the export extra)

        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        session.run(None, {"images": x.numpy()})
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {"images": x.numpy()})
            times.append((time.perf_counter() - start) * 1000)
        out["onnxruntime_ms"] = sorted(times)[len(times) // 2]
    except ImportError:
        pass
    return out


def _dynamic(card: dict) -> str:
    native = card["parity"].get("native_aspect") or {}
    if native.get("ok"):
        h, w = native["size"]
        return (f"batch, H and W dynamic (parity checked at {h} x {w}); run images at their aspect ratio with "
                "`sskd_ray.data.resize.prepare_arrays`, sides a multiple of the model's stride")
    return "batch dynamic; H, W fixed at the export size (a non-square input did not match eager)"


def write_model_card(out: Path, card: dict) -> Path:
    m, eff = card["model"], card["efficiency"]
    metrics = card.get("metrics") or {}
    lines = [f"# Model card: sskd-ray student ({m['encoder']} + {m['neck']} + mask decoder)", "",
             "| | |", "|---|---|",
             f"| classes ({len(card['class_names'])}) | {', '.join(card['class_names'])} |",
             f"| category ids | {card['category_ids']} |",
             f"| input | RGB float (B, 3, {m['image_size']}, {m['image_size']}) in [0, 1] at export; {_dynamic(card)} |",
             f"| normalisation | inside the model: {card['normalisation']} |",
             "| outputs | mask_logits (B, N, H/4, W/4), class_logits (B, N, C+1; last = no object) |",
             f"| queries N | {m['num_queries']} |",
             f"| val mask AP / AP50 | {metrics.get('mask_AP', '-')} / {metrics.get('mask_AP50', '-')} |",
             f"| parameters | {eff['params']:,} |",
             f"| FLOPs (one image) | {eff['flops'] / 1e9:.2f} G |",
             *[f"| latency, {k.replace('_ms', '')} (batch 1, CPU) | {v:.1f} ms |" for k, v in eff["latency"].items()],
             f"| files | student.pt (TorchScript), student.onnx (opset {OPSET}) |", "",
             "Post-processing (`sskd_ray.models.postprocess`): predictions and pseudo-labels use `select_instances` "
             "(one class per query, score = class prob x mask quality >= threshold, masks at logit 0, mask NMS); "
             "the val AP above uses `instances_from_output` (Mask2Former's top-k (query, class) pairs).", ""]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return path


def export_model(folder: str | Path, out: str | Path, batch: int = 2) -> dict:
    """Export, check parity, measure, write the card. Returns the card (parity included).
    `folder` and `out` may be URIs: the files are made locally and uploaded at the end."""
    with storage.local_output(out) as local:
        local.mkdir(parents=True, exist_ok=True)
        return _export_into(storage.normalize(folder), local, batch)


def _export_into(folder: str, out: Path, batch: int) -> dict:
    model, trained = load_trained(folder)
    size = trained.model.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(batch, 3, size, size, generator=generator)
    ts = export_torchscript(model, example, out / "student.pt")
    onnx, dynamic = export_onnx(model, example, out / "student.onnx")
    parity = check_parity(model, ts, onnx, torch.rand(batch + 1, 3, size, size, generator=generator))
    # native aspect: the same files at a 1:2 input (sides a multiple of the model's stride)
    multiple = size_multiple(model)
    wide = (-(-size // multiple) * multiple, -(-2 * size // multiple) * multiple)
    parity["native_aspect"] = check_parity(model, ts, onnx, torch.rand(1, 3, *wide, generator=generator))
    parity["native_aspect"]["size"] = list(wide)
    mean, std = getattr(getattr(model, "encoder", None), "norm", (None, None))
    metrics_path = storage.join(folder, "metrics.json")
    card = {**trained.as_dict(), "parity": parity, "dynamic_axes": dynamic,
            "normalisation": f"(x - {list(mean)}) / {list(std)}" if mean is not None else "model-specific",
            "metrics": storage.read_json(metrics_path) if storage.is_file(metrics_path) else None,
            "efficiency": {"params": count_parameters(model), "flops": count_flops(model, example[:1]),
                           "latency": _latencies(model, ts, onnx, size)}}
    write_model_card(out, card)
    return card
