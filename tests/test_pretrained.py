"""The user-facing API: Student / Teacher.from_pretrained(folder).predict(images) on tiny random-weight
models (models/pretrained.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sskd_ray.config import Config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.resize import InferenceSizes
from sskd_ray.models.build import build_model, tiny_model_config
from sskd_ray.models.checkpoint import make_card, save_trained
from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.pretrained import Student, Teacher

NAMES = list(CLASS_NAMES)
SIZES = [(40, 80), (30, 90), (64, 64)]  # 2:1, 1:3 and square originals (H, W)


def _save(folder, role: str, encoder_cfg=None):
    cfg = replace(tiny_model_config(encoder_cfg or Config().student), image_size=64)
    torch.manual_seed(0)
    model = build_model(cfg, NAMES)
    save_trained(folder, model, make_card(cfg, role, NAMES, list(range(101, 111)), InferenceSizes(64, 160),
                                          stage="distill" if role == "student" else "teacher_selftrain"))
    return model


def _confident(student: Student) -> list:
    """Make every query a confident, image-covering instance of class 3, and record input shapes."""
    seen = []

    def hook(module, args, output):
        seen.append(tuple(args[0].shape))
        classes = torch.full_like(output.class_logits, -10.0)
        classes[..., 3] = 10.0
        return SegOutput(torch.full_like(output.mask_logits, 10.0), classes, output.embeddings, output.aux)

    student.model.register_forward_hook(hook)
    return seen


def test_from_pretrained_predicts_masks_at_each_images_own_size(tmp_path):
    _save(tmp_path / "final", "student")
    student = Student.from_pretrained(tmp_path / "final")
    assert student.class_names == NAMES and student.category_ids == list(range(101, 111))
    seen = _confident(student)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for size in SIZES]
    Image.fromarray(arrays[1]).save(tmp_path / "tall.png")
    images = [arrays[0], str(tmp_path / "tall.png"), Image.fromarray(arrays[2])]  # an array, a path, a PIL image
    found = student.predict(images, threshold=0.5, batch_size=2)
    # batches of 2 at native aspect: 2:1 -> 64 x 128, 1:3 -> capped at 160 -> 53 x 160, padded to x32
    assert seen == [(2, 3, 64, 160), (1, 3, 64, 64)]
    assert len(found) == 3
    for size, instances in zip(SIZES, found):
        # every query is the same whole-image mask: mask NMS leaves one
        assert len(instances) == 1
        inst = instances[0]
        assert inst.mask.shape == size and inst.mask.all() and inst.label == 3 and inst.score > 0.99


def test_predict_keeps_nothing_below_the_threshold(tmp_path):
    _save(tmp_path / "final", "student")
    student = Student.from_pretrained(tmp_path / "final")
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    assert student.predict([image], threshold=1.01) == [[]]  # no score exceeds 1
    found = student.predict([image], threshold=0.0, top_k=2, nms_iou=1.01)[0]  # random weights, NMS off
    assert len(found) == 2 and found[0].score >= found[1].score and found[0].mask.shape == (32, 48)


def test_roles_are_checked_and_save_pretrained_round_trips(tmp_path):
    _save(tmp_path / "teacher", "teacher")
    with pytest.raises(ValueError, match="holds a teacher .*Teacher.from_pretrained"):
        Student.from_pretrained(tmp_path / "teacher")
    teacher = Teacher.from_pretrained(tmp_path / "teacher")
    teacher.save_pretrained(tmp_path / "copy")
    again = Teacher.from_pretrained(tmp_path / "copy")
    assert again.card == teacher.card
    assert all(torch.equal(a, b) for a, b in zip(teacher.model.state_dict().values(), again.model.state_dict().values()))


def test_unreadable_image_and_wrong_arrays_are_named(tmp_path):
    _save(tmp_path / "final", "student")
    student = Student.from_pretrained(tmp_path / "final")
    with pytest.raises(ValueError, match="missing.png: cannot read"):
        student.predict([str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        student.predict([np.zeros((8, 8), dtype=np.uint8)])
