"""Native aspect ratio: inputs keep each image's aspect, batches are padded, and masks map back to
the original pixels exactly (issue 15: labeling, eval and predict of 2:1 and 1:3 images)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sskd_ray.config import Config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.coco import load_coco
from sskd_ray.data.resize import fit_size, pad_batch
from sskd_ray.deploy.predict import predict_arrays
from sskd_ray.eval.model_eval import predict_coco
from sskd_ray.label.predictor import TeacherPredictor
from sskd_ray.models.build import build_model, tiny_model_config
from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.postprocess import instances_from_output

WIDE, TALL = (40, 80), (30, 90)  # 2:1 and 1:3 originals (H, W)


def test_fit_size_keeps_the_aspect_and_caps_the_long_side():
    assert fit_size(WIDE, 64) == (64, 128)
    assert fit_size(TALL, 64) == (64, 192)
    assert fit_size((90, 30), 64, max_side=150) == (150, 50)  # long side capped: short side below 64
    assert fit_size((1024, 2048), 1024, 2048) == (1024, 2048)  # Cityscapes at its native size
    assert fit_size((100, 250), 64, multiple=32) == (64, 160)
    assert fit_size(WIDE, 0) == WIDE  # 0 keeps the image's own size


def test_pad_batch_pads_bottom_right_and_reports_content_sizes():
    a, b = torch.ones(3, 2, 5), 2 * torch.ones(3, 4, 3)
    images, sizes = pad_batch([a, b], multiple=4)
    assert images.shape == (2, 3, 4, 8) and sizes == [(2, 5), (4, 3)]
    assert images[0, :, :2, :5].eq(1).all() and images[0, :, 2:].eq(0).all() and images[0, :, :, 5:].eq(0).all()
    assert images[1, :, :, :3].eq(2).all() and images[1, :, :, 3:].eq(0).all()


def _one_query_output(mask_logits: torch.Tensor) -> SegOutput:
    """Query 0 is class 0 with certainty; the others are "no object"."""
    b, n = mask_logits.shape[:2]
    class_logits = torch.full((b, n, len(CLASS_NAMES) + 1), -20.0)
    class_logits[:, :, -1] = 20.0
    class_logits[:, 0, 0], class_logits[:, 0, -1] = 20.0, -20.0
    return SegOutput(mask_logits, class_logits, torch.zeros(b, 4, 1, 1), [])


def test_content_crop_maps_the_left_half_to_the_original_left_half():
    # an image of original size (60, 120) entered the model at (32, 64) inside a (32, 96) frame; the
    # logits (stride 4) are (8, 24): content = columns 0..15. +10 on the content's left half (0..7) and
    # on the padding (16..23, which must be cropped away), -10 on its right half.
    logits = torch.full((1, 2, 8, 24), -10.0)
    logits[0, 0, :, :8] = 10.0
    logits[0, 0, :, 16:] = 10.0
    (insts,) = instances_from_output(_one_query_output(logits), [(60, 120)], 0.0, 1,
                                     image_sizes=[(32, 64)], input_size=(32, 96))
    expected = np.zeros((60, 120), bool)
    expected[:, :60] = True
    assert len(insts) == 1 and insts[0].mask.shape == (60, 120)
    assert np.array_equal(insts[0].mask, expected)
    # a tall content region: the top third of a (90, 30) original, content (48, 16) in a (64, 32) frame
    logits = torch.full((1, 2, 16, 8), -10.0)
    logits[0, 0, :4] = 10.0  # content rows 0..11 in logit pixels; the top third is rows 0..3
    logits[0, 0, 12:] = 10.0  # padding rows
    (insts,) = instances_from_output(_one_query_output(logits), [(90, 30)], 0.0, 1,
                                     image_sizes=[(48, 16)], input_size=(64, 32))
    expected = np.zeros((90, 30), bool)
    expected[:30] = True
    assert np.array_equal(insts[0].mask, expected)


def test_whole_frame_postprocessing_matches_plain_interpolation():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8)
    out = _one_query_output(logits)
    (a,) = instances_from_output(out, [(20, 36)], 0.0, 1)
    ref = torch.nn.functional.interpolate(logits[:, :1], size=(20, 36), mode="bilinear", align_corners=False)[0, 0]
    assert np.array_equal(a[0].mask, (ref > 0).numpy())


@pytest.fixture
def student():
    """A tiny real student whose forward records its input shapes; a hook sets its mask logits to +1 so
    every top query yields a mask covering the whole content (shapes are then checkable)."""
    cfg = dataclasses.replace(tiny_model_config(Config().student), image_size=64)
    torch.manual_seed(0)
    model = build_model(cfg, list(CLASS_NAMES)).eval()
    seen: list[tuple[int, ...]] = []

    def hook(module, args, output):
        seen.append(tuple(args[0].shape))
        return SegOutput(torch.ones_like(output.mask_logits), output.class_logits, output.embeddings, output.aux)

    model.register_forward_hook(hook)
    return model, cfg, seen


def _write_images(folder) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i, (h, w) in enumerate((WIDE, TALL)):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        items.append({"id": i + 1, "file_name": path.name, "height": h, "width": w, "path": str(path)})
    return items


def test_predict_coco_runs_at_native_aspect(student, tmp_path):
    model, _, seen = student
    items = _write_images(tmp_path)
    coco = {"images": [{k: im[k] for k in ("id", "file_name", "height", "width")} for im in items],
            "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]}
    (tmp_path / "val.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "val.json", tmp_path)
    results = predict_coco(model, dataset, 64, batch_size=1, top_k=3)
    assert seen == [(1, 3, 64, 128), (1, 3, 64, 192)]
    from pycocotools import mask as mask_utils

    for im in items:
        mine = [r for r in results if r["image_id"] == im["id"]]
        assert mine and all(tuple(r["segmentation"]["size"]) == (im["height"], im["width"]) for r in mine)
        assert all(mask_utils.decode(r["segmentation"]).all() for r in mine)  # the whole image, no padding lost


def test_labeling_predictor_pads_a_mixed_batch_and_maps_back(student, tmp_path):
    _, cfg, _ = student
    spec = {"model": dataclasses.asdict(cfg), "class_names": list(CLASS_NAMES), "checkpoint": "",
            "category_ids": list(range(1, 11)), "inference": {"short_side": 64, "max_side": 160}}
    predictor = TeacherPredictor(spec, str(tmp_path / "store"), "t", 64, 0.0, 3, batch_size=2, max_pixels=10**7)
    seen = []

    def hook(module, args, output):
        seen.append(tuple(args[0].shape))
        return SegOutput(torch.ones_like(output.mask_logits), output.class_logits, output.embeddings, output.aux)

    predictor.model.register_forward_hook(hook)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for size in (WIDE, TALL)]
    found = predictor._predict(arrays)
    # 2:1 -> (64, 128); 1:3 -> long side capped at 160 -> (53, 160); one frame padded to multiples of 32
    assert seen == [(2, 3, 64, 160)]
    for size, insts in zip((WIDE, TALL), found):
        assert insts and all(i.mask.shape == size and i.mask.all() for i in insts)


def test_predict_arrays_runs_at_native_aspect(student, tmp_path):
    model, cfg, seen = student
    items = _write_images(tmp_path)
    card = {"model": dataclasses.asdict(cfg), "inference": {"short_side": 64, "max_side": 0}}
    done, errors = predict_arrays(model, card, [{"path": im["path"]} for im in items], 1, 0.0, 3, device="cpu")
    assert not errors and seen == [(1, 3, 64, 128), (1, 3, 64, 192)]
    for (_, array, insts), im in zip(done, items):
        assert array.shape[:2] == (im["height"], im["width"])
        assert insts and all(i.mask.shape == (im["height"], im["width"]) for i in insts)
