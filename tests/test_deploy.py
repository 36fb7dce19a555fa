"""Using the student: export to TorchScript and ONNX with parity, and predict with overlays."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from sskd_ray.config import Config, LossConfig
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.resize import InferenceSizes
from sskd_ray.eval import evaluate_masks
from sskd_ray.models.build import build_model, tiny_model_config
from sskd_ray.models.freeze import param_groups
from sskd_ray.train.data import build_training_set, draw_batch
from sskd_ray.train.objective import Objective
from sskd_ray.models.checkpoint import make_card, save_trained
from sskd_ray.models.pretrained import Student


@pytest.fixture(scope="module")
def trained_student(builtin_dir, tmp_path_factory):
    """A tiny student trained for a few steps, saved as a stage's final/ folder."""
    cfg = replace(tiny_model_config(Config().student), image_size=64)
    torch.manual_seed(0)
    model = build_model(cfg, list(CLASS_NAMES))
    objective = Objective(model, LossConfig(num_points=64), use_pseudo_labels=False, use_contrastive=False)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-3, 1.0, 0.0))
    ts = build_training_set(str(builtin_dir / "train.json"), str(builtin_dir / "images"), 64)
    for it in range(3):
        b = draw_batch(ts, it, 0, 2, 0, 1, 0.0)
        loss = objective(b.weak, b.strong, b.crop_boxes, b.strong_flipped, b.targets, b.labeled, (1.0, 1.0))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("student") / "final"
    folder.mkdir()
    save_trained(folder, model, make_card(cfg, "student", list(CLASS_NAMES), list(range(1, 11)), InferenceSizes(64)))
    (folder / "metrics.json").write_text(json.dumps({"mask_AP": 1.5, "mask_AP50": 4.0}))
    return folder


def test_export_torchscript_and_onnx_match_eager(trained_student, tmp_path):
    from sskd_ray.deploy.export import export_model

    card = export_model(trained_student, tmp_path)
    parity = card["parity"]
    assert parity["batch"] == 3  # exported at batch 2: the dynamic batch axis is exercised
    assert all(v < 1e-4 for v in parity["torchscript"].values())
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:  # the export extra installs it; say so if it is absent
        assert "skipped" in parity["onnx"], err
    else:
        assert all(v < 1e-3 for v in parity["onnx"].values()), parity["onnx"]
    assert parity["ok"]
    assert parity["native_aspect"]["size"] == [64, 128] and parity["native_aspect"]["ok"]  # H, W dynamic
    text = (tmp_path / "MODEL_CARD.md").read_text()
    for fact in (CLASS_NAMES[0], "(B, 3, 64, 64)", "1.5 / 4.0", "parameters", "onnxruntime"):
        assert fact in text, fact
    assert (tmp_path / "student.pt").stat().st_size > 10_000 and (tmp_path / "student.onnx").stat().st_size > 10_000


def test_predict_writes_valid_results_and_overlays(trained_student, builtin_dir, tmp_path):
    from sskd_ray.deploy.predict import predict

    val = json.loads((builtin_dir / "val.json").read_text())
    small = {**val, "images": val["images"][:4],
             "annotations": [a for a in val["annotations"] if a["image_id"] in {im["id"] for im in val["images"][:4]}]}
    listing = builtin_dir / "val4.json"
    listing.write_text(json.dumps(small))
    summary = predict(Student.from_pretrained(trained_student), str(listing), tmp_path / "out", threshold=0.0, top_k=5)
    assert summary["images"] == 4 and summary["predicted"] == 4 and summary["skipped"] == 0
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    ids = {im["id"]: im for im in small["images"]}
    assert results and {r["image_id"] for r in results} <= set(ids)
    for r in results:  # masks at each image's own size, categories from the dataset
        assert r["segmentation"]["size"] == [ids[r["image_id"]]["height"], ids[r["image_id"]]["width"]]
        assert r["category_id"] in range(1, 11) and 0.0 <= r["score"] <= 1.0
    metrics = evaluate_masks(listing, results)  # pycocotools accepts them against the images' annotations
    assert metrics["num_predictions"] == len(results)
    overlays = sorted((tmp_path / "out" / "overlays").glob("*.png"))
    assert len(overlays) == 4
    with Image.open(overlays[0]) as im:
        assert min(im.size) >= 384  # 64-px scenes are enlarged to stay readable
