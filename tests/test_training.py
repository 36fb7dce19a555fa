"""The training loop's parts (schedules, batches, the objective) and one stage on a real local Ray,
including a worker killed mid-stage that the stage survives."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sskd_ray.config import LossConfig, load_config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.models.build import build_model
from sskd_ray.models.checkpoint import read_weights
from sskd_ray.train.data import build_training_set, draw_batch
from sskd_ray.train.loop import FAULT_ENV, lr_factor
from sskd_ray.train.objective import Objective, instance_ids
from sskd_ray.train.pipeline import prepare_data, stage_specs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke config and its prepared data (built-in, 24 train / 8 val at 64 px)."""
    cfg = load_config([REPO / "configs" / "default.yaml", REPO / "configs" / "smoke.yaml"])
    run_dir = tmp_path_factory.mktemp("run")
    return cfg, run_dir, prepare_data(cfg, run_dir)


def test_lr_schedules_by_hand():
    assert lr_factor("poly", 0, 100) == 1.0
    assert lr_factor("poly", 50, 100) == pytest.approx(0.5 ** 0.9)
    assert lr_factor("poly", 99, 100) == pytest.approx(0.01 ** 0.9)
    assert lr_factor("multistep", 89, 100) == 1.0
    assert lr_factor("multistep", 90, 100) == pytest.approx(0.1)
    assert lr_factor("multistep", 95, 100) == pytest.approx(0.01)


def test_split_files_are_disjoint_and_absolute(smoke_run):
    cfg, run_dir, data = smoke_run
    labeled = json.loads(Path(data.labeled_json).read_text())
    pool = json.loads(Path(data.unlabeled_json).read_text())
    ids_l, ids_u = {im["id"] for im in labeled["images"]}, {im["id"] for im in pool["images"]}
    assert not ids_l & ids_u and len(ids_l) + len(ids_u) == 24 and len(ids_l) == 6  # 25 % of 24
    assert all(Path(im["file_name"]).is_absolute() and Path(im["file_name"]).is_file() for im in labeled["images"])
    assert {a["image_id"] for a in labeled["annotations"]} <= ids_l


def test_batches_are_reproducible_and_disjoint_across_ranks(smoke_run):
    _, _, data = smoke_run
    ts = build_training_set(data.labeled_json, "", 32)
    a = draw_batch(ts, 7, seed=0, batch_size=2, rank=0, world_size=2, pseudo_share=0.0)
    b = draw_batch(ts, 7, seed=0, batch_size=2, rank=0, world_size=2, pseudo_share=0.0)
    other = draw_batch(ts, 7, seed=0, batch_size=2, rank=1, world_size=2, pseudo_share=0.0)
    assert torch.equal(a.weak, b.weak) and torch.equal(a.strong, b.strong)
    assert a.weak.shape == (2, 3, 32, 32) and a.labeled.all()
    flat = lambda x: {tuple(v.flatten()[:50].tolist()) for v in x.weak}  # noqa: E731
    assert not flat(a) & flat(other)  # the two ranks drew different images
    for target in a.targets:  # targets follow the weak view (resized, flipped with it)
        assert target["masks"].shape[1:] == (32, 32) and len(target["masks"]) == len(target["labels"])


def test_unreadable_image_is_skipped_and_listed(smoke_run, tmp_path):
    _, _, data = smoke_run
    coco = json.loads(Path(data.labeled_json).read_text())
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    coco["images"][0] = {**coco["images"][0], "file_name": str(bad)}
    path = tmp_path / "labeled.json"
    path.write_text(json.dumps(coco))
    ts = build_training_set(str(path), "", 32)
    for it in range(6):
        batch = draw_batch(ts, it, seed=0, batch_size=3, rank=0, world_size=1, pseudo_share=0.0)
        assert batch.weak.shape[0] == 3  # a good image takes the broken one's place
    assert list(ts.skipped) == [str(bad)] and "UnidentifiedImageError" in ts.skipped[str(bad)]


def test_instance_ids_by_hand():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 2:, 2:] = True
    ids = instance_ids([{"masks": masks}, {"masks": masks[:1]}], (2, 2))
    assert ids.tolist() == [[[1, 0], [0, 2]], [[3, 0], [0, 0]]]


def _objective_inputs(data, size=32):
    ts = build_training_set(data.labeled_json, "", size)
    batch = draw_batch(ts, 0, seed=0, batch_size=2, rank=0, world_size=1, pseudo_share=0.0)
    batch.labeled = torch.tensor([True, False])  # pretend the second image carries pseudo-labels
    return batch


@pytest.mark.parametrize("sampler", ["fusion", "uniform"])
def test_objective_combines_the_three_terms(smoke_run, sampler):
    cfg, _, data = smoke_run
    torch.manual_seed(0)
    model = build_model(replace(cfg.student, image_size=32), list(CLASS_NAMES))
    loss = LossConfig(num_points=64, num_negatives=8, max_anchors=64, pseudo_label_weight=0.5,
                      contrastive_weight=0.3, sampler=sampler)
    batch = _objective_inputs(data)
    terms = Objective(model, loss, use_pseudo_labels=True, use_contrastive=True)(
        batch.weak, batch.strong, batch.crop_boxes, batch.strong_flipped, batch.targets, batch.labeled,
        (1.0, 1.0), torch.Generator().manual_seed(0))
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert values["loss_sup"] > 0 and values["loss_pl"] > 0 and values["loss_con"] > 0
    # the untrained embedding head gives InfoNCE near log(K + 1) (all similarities alike)
    assert values["loss_con"] == pytest.approx(math.log(9), rel=0.5)
    expected = values["loss_sup"] + 0.5 * values["loss_pl"] + 0.3 * values["loss_con"]
    assert values["loss"] == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= values["false_negative_rate"] <= 1.0
    terms["loss"].backward()
    assert model.embed_head.net[0].weight.grad.abs().sum() > 0


def test_objective_without_pool_terms(smoke_run):
    cfg, _, data = smoke_run
    torch.manual_seed(0)
    model = build_model(replace(cfg.student, image_size=32), list(CLASS_NAMES))
    batch = _objective_inputs(data)
    terms = Objective(model, LossConfig(num_points=64), use_pseudo_labels=False, use_contrastive=False)(
        batch.weak, batch.strong, batch.crop_boxes, batch.strong_flipped, batch.targets, batch.labeled, (1.0, 1.0))
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert values["loss_pl"] == 0.0 and values["loss_con"] == 0.0
    assert values["loss"] == pytest.approx(values["loss_sup"])
    terms["loss"].backward()  # the unused embedding head gets no gradient (DDP: find_unused_parameters)
    assert model.embed_head.net[0].weight.grad is None
    assert model.decoder.class_head.weight.grad.abs().sum() > 0


def test_an_unused_output_holds_no_graph(smoke_run):
    """The old `0 * outputs.sum()` kept every output's graph alive (at full size, gigabytes of
    activations): an output no term reads must be freed once the forward returns."""
    import gc
    import weakref

    cfg, _, data = smoke_run
    torch.manual_seed(0)
    model = build_model(replace(cfg.student, image_size=32), list(CLASS_NAMES))
    seen = []
    model.embed_head.register_forward_hook(lambda module, args, output: seen.append(weakref.ref(output)))
    batch = _objective_inputs(data)
    terms = Objective(model, LossConfig(num_points=64), use_pseudo_labels=True, use_contrastive=False)(
        batch.weak, batch.strong, batch.crop_boxes, batch.strong_flipped, batch.targets, batch.labeled, (1.0, 1.0))
    gc.collect()
    assert len(seen) == 1 and seen[0]() is None  # the embeddings died with the forward
    assert terms["loss"].requires_grad


def test_a_step_with_no_term_still_backpropagates(smoke_run):
    """Only pseudo-labeled images but no pseudo-label term (refinement fed a pool image): every term is
    0, yet backward() runs (DDP needs it every step) and no parameter moves."""
    cfg, _, data = smoke_run
    torch.manual_seed(0)
    model = build_model(replace(cfg.student, image_size=32), list(CLASS_NAMES))
    batch = _objective_inputs(data)
    batch.labeled = torch.tensor([False, False])
    terms = Objective(model, LossConfig(num_points=64), use_pseudo_labels=False, use_contrastive=False)(
        batch.weak, batch.strong, batch.crop_boxes, batch.strong_flipped, batch.targets, batch.labeled, (1.0, 1.0))
    assert float(terms["loss"].detach()) == 0.0
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == 1 and float(grads[0].abs().sum()) == 0.0


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def test_stage_survives_a_killed_worker(smoke_run, local_ray, tmp_path, monkeypatch):
    """One Ray Train worker dies hard (os._exit) at iteration 5; the stage restarts from a registered
    checkpoint (iteration 4, or 2 if the crash beat the last registration: docs/ray_notes.md) and
    finishes all 8 iterations with an evaluated model."""
    from sskd_ray.train.stages import run_stage

    cfg, run_dir, data = smoke_run
    spec = stage_specs(cfg, data, run_dir)["teacher_finetune"]
    spec = replace(spec, folder=tmp_path / "stage", storage=str(tmp_path / "ray_train"),
                   stage=replace(spec.stage, iterations=8, checkpoint_every=2, max_failures=2))
    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(FAULT_ENV, f"5:{marker}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = run_stage(spec, uri, "test")
    assert marker.is_file()  # the worker really died once
    assert metrics["iterations"] == 8 and metrics["resumes"] == 1 and metrics["mask_AP"] is not None
    history = json.loads((tmp_path / "stage" / "history.json").read_text())
    resumed = [row["iteration"] for row in history if row.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0] in (2, 4)  # a registered checkpoint before the crash
    steps = [row["iteration"] for row in history if "loss" in row]
    assert steps == sorted(steps) and steps[-1] == 8 and 5 in steps
    assert all(0.0 <= row["data_wait_share"] <= 1.0 for row in history if "loss" in row)  # batches drawn ahead
    assert (tmp_path / "stage" / "final" / "model.safetensors").is_file() and (tmp_path / "stage" / "DONE").is_file()
    # a finished stage is not trained again
    monkeypatch.delenv(FAULT_ENV)
    before = sorted(p.name for p in (tmp_path / "ray_train").rglob("checkpoint_*"))
    assert run_stage(spec, uri, "test") == json.loads((tmp_path / "stage" / "metrics.json").read_text())
    assert sorted(p.name for p in (tmp_path / "ray_train").rglob("checkpoint_*")) == before


def test_two_workers_ddp_on_gloo(smoke_run, local_ray, tmp_path):
    """Two CPU workers (gloo DDP) split each global batch; the stage ends with one evaluated model."""
    from sskd_ray.train.stages import run_stage

    cfg, run_dir, data = smoke_run
    spec = stage_specs(cfg, data, run_dir)["distill"]
    spec = replace(spec, folder=tmp_path / "stage", storage=str(tmp_path / "ray_train"),
                   stage=replace(spec.stage, iterations=2, num_workers=2, cpus_per_worker=1, use_pseudo_labels=False))
    metrics = run_stage(spec, f"sqlite:///{tmp_path / 'mlflow.db'}", "test")
    assert metrics["world_size"] == 2 and metrics["iterations"] == 2
    state = read_weights(tmp_path / "stage" / "final")
    model = build_model(spec.model, list(CLASS_NAMES))
    model.load_state_dict(state)  # saved unwrapped: loads into a plain model
    assert all(np.isfinite(v.float().numpy()).all() for v in state.values())
    history = json.loads((tmp_path / "stage" / "history.json").read_text())
    shares = [row["contrastive_share"] for row in history if "contrastive_share" in row]
    assert shares and all(0.0 < v < 1.0 for v in shares)  # L_con's share of the step, logged per window


def test_objective_trains_the_vfm_teacher_through_its_own_losses(smoke_run):
    """The Grounding-DINO + SAM2 teacher (tiny config) goes through the same objective: its
    supervised term is its adaptation loss, and the contrastive term uses its SAM2-feature head."""
    from sskd_ray.config import ModelConfig

    _, _, data = smoke_run
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=4, embed_dim=8, image_size=64),
                          list(CLASS_NAMES))
    batch = _objective_inputs(data, size=64)
    terms = Objective(teacher, LossConfig(num_negatives=8, max_anchors=64), use_pseudo_labels=True,
                      use_contrastive=True)(batch.weak, batch.strong, batch.crop_boxes, batch.strong_flipped,
                                            batch.targets, batch.labeled, (1.0, 1.0), torch.Generator().manual_seed(0))
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert values["loss_sup"] > 0 and values["loss_pl"] > 0 and values["loss_con"] > 0
    terms["loss"].backward()
    assert teacher.embed_head[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.detector.parameters())


def test_vfm_teacher_without_contrastive_trains_from_one_pass(smoke_run, monkeypatch):
    """Fine-tuning the VFM teacher (no L_con) needs only its adaptation loss: the fused forward,
    which only feeds L_con, is not run (it would double the cost of the most expensive model)."""
    from sskd_ray.config import ModelConfig

    _, _, data = smoke_run
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=4, embed_dim=8, image_size=64),
                          list(CLASS_NAMES))
    calls = []
    monkeypatch.setattr(type(teacher), "forward", lambda self, images: calls.append(1))
    batch = _objective_inputs(data, size=64)
    terms = Objective(teacher, LossConfig(), use_pseudo_labels=False, use_contrastive=False)(
        batch.weak, batch.strong, batch.crop_boxes, batch.strong_flipped, batch.targets, batch.labeled, (1.0, 1.0))
    loss, sup = float(terms["loss"].detach()), float(terms["loss_sup"].detach())
    assert calls == [] and sup > 0 and loss == pytest.approx(sup)
    terms["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.detector.parameters())


def test_content_sizes_of_a_padded_batch():
    from sskd_ray.train.objective import content_sizes

    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[0, :4, :8] = True  # a wide image padded at the bottom
    mask[1, :6, :3] = True  # a tall one padded at the right
    assert content_sizes(mask) == [(4, 8), (6, 3)]
