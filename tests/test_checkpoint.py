"""A trained model's folder (sskd_ray/models/checkpoint.py): the one writer and reader, old folders."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from sskd_ray.config import Config, ModelConfig
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.resize import InferenceSizes
from sskd_ray.models.build import build_model, tiny_model_config
from sskd_ray.models.checkpoint import (CARD_FILE, WEIGHTS_FILE, ModelCard, is_trained_folder, load_trained, make_card,
                                        read_card, read_weights, save_trained, weights_digest)

NAMES = list(CLASS_NAMES)


def _student() -> tuple[torch.nn.Module, ModelConfig]:
    cfg = replace(tiny_model_config(Config().student), image_size=64)
    torch.manual_seed(0)
    return build_model(cfg, NAMES), cfg


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_keeps_weights_card_and_provenance(tmp_path):
    model, cfg = _student()
    card = make_card(replace(cfg, pretrained="builtin"), "student", NAMES, list(range(1, 11)), InferenceSizes(64, 96),
                     stage="distill", run=str(tmp_path / "run"))
    save_trained(tmp_path / "final", model, card)
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    loaded, read = load_trained(tmp_path / "final")
    assert _same(model.state_dict(), loaded.state_dict()) and not loaded.training
    assert read == card and read.model.pretrained == ""  # the folder's weights replace any pretrained ones
    assert read.provenance.stage == "distill" and read.provenance.commit  # a hash, or "unknown" outside git
    on_disk = json.loads((tmp_path / "final" / CARD_FILE).read_text())
    assert on_disk["format"] == "sskd-ray trained model" and on_disk["inference"] == {"short_side": 64, "max_side": 96}
    # the weights file is plain safetensors: any safetensors reader sees the state dict
    assert load_file(tmp_path / "final" / WEIGHTS_FILE).keys() == model.state_dict().keys()


def test_tied_weights_are_stored_once_and_restored_under_each_name(tmp_path):
    head = torch.nn.Linear(4, 4)
    model = torch.nn.ModuleDict({"a": head, "b": head, "c": torch.nn.Linear(4, 2)})  # "b" is "a" itself
    card = make_card(ModelConfig(), "student", ["x"], [1], InferenceSizes(32))
    save_trained(tmp_path, model, card)
    stored = load_file(tmp_path / WEIGHTS_FILE)
    assert "b.weight" not in stored and "a.weight" in stored
    state = read_weights(tmp_path)
    assert _same(state, model.state_dict())


def test_old_folder_with_model_pt_and_teacher_json_loads_with_one_line(tmp_path, capsys):
    model, cfg = _student()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    old_card = {"model": {**vars(cfg), "pretrained": "", "retired_field": 1},  # unknown keys are left out
                "class_names": NAMES, "category_ids": list(range(1, 11))}  # before "inference" existed
    (tmp_path / "teacher.json").write_text(json.dumps(old_card))
    assert is_trained_folder(tmp_path)
    loaded, card = load_trained(tmp_path)
    assert _same(model.state_dict(), loaded.state_dict())
    assert card.inference == InferenceSizes(64, 0) and card.role == ""  # the training size, uncapped
    lines = [line for line in capsys.readouterr().out.splitlines() if "old format" in line]
    assert len(lines) == 1 and "model.pt" in lines[0]
    assert len(weights_digest(tmp_path)) == 12


def test_a_folder_that_is_not_a_trained_model_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a card without weights
    assert not is_trained_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*student/final"):
        read_card(tmp_path)


def test_weights_of_another_architecture_do_not_load(tmp_path):
    model, cfg = _student()
    save_trained(tmp_path, model, make_card(replace(cfg, num_queries=4), "student", NAMES, list(range(1, 11)),
                                            InferenceSizes(64)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_trained(tmp_path)


def test_card_refuses_an_unknown_role():
    with pytest.raises(ValueError, match="role"):
        make_card(ModelConfig(), "critic", NAMES, list(range(1, 11)), InferenceSizes(64))
    card = ModelCard.from_dict({"model": {"kind": "maskformer"}, "class_names": ["a"], "category_ids": [7],
                                "role": "teacher"})
    assert card.role == "teacher" and card.inference == InferenceSizes(ModelConfig().image_size, 0)


def test_vfm_teacher_with_tied_heads_round_trips(tmp_path):
    """Grounding-DINO ties its box and class heads across decoder layers (18 shared tensors in the tiny
    teacher): they are stored once and the reloaded teacher predicts exactly as the saved one."""
    cfg = ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16)
    torch.manual_seed(0)
    teacher = build_model(cfg, NAMES).eval()
    save_trained(tmp_path, teacher, make_card(cfg, "teacher", NAMES, list(range(1, 11)), InferenceSizes(64)))
    assert len(load_file(tmp_path / WEIGHTS_FILE)) < len(teacher.state_dict())  # the tied ones once
    torch.manual_seed(1)  # another random start: every weight must come from the folder
    loaded, card = load_trained(tmp_path)
    assert card.model.pretrained == cfg.pretrained  # a VFM teacher's card keeps where its parts come from
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = teacher(images), loaded(images)
    assert torch.equal(a.mask_logits, b.mask_logits) and torch.equal(a.class_logits, b.class_logits)
