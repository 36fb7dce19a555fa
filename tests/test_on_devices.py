"""The code paths a GPU user runs, on every device this machine has. Each test takes the `device`
fixture (tests/conftest.py): the CPU variant runs everywhere, so CI exercises the same code; the CUDA
variant is marked `gpu` (`make test-gpu`) and skips with "needs CUDA" where there is none. The tests
that only make sense on a GPU (a Ray Data actor holding a GPU, a Ray Train stage with use_gpu) are
marked `gpu` alone. Each asserts where its outputs live and that its losses are finite."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import needs_cuda
from sskd_ray.config import LossConfig, ModelConfig, load_config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.losses.contrastive import info_nce, sample_negatives, sampling_embedding
from sskd_ray.models.build import build_model, tiny_model_config
from sskd_ray.models.freeze import param_groups
from sskd_ray.train.data import build_training_set, draw_batch
from sskd_ray.train.objective import Objective

REPO = Path(__file__).resolve().parents[1]
NAMES = list(CLASS_NAMES)


def _batch(builtin_dir: Path, size: int, device: torch.device):
    ts = build_training_set(str(builtin_dir / "train.json"), str(builtin_dir / "images"), size)
    batch = draw_batch(ts, 0, seed=0, batch_size=2, rank=0, world_size=1, pseudo_share=0.0)
    batch.labeled = torch.tensor([True, False])  # the second image plays a pseudo-labeled one
    targets = [{k: v.to(device) for k, v in t.items()} for t in batch.targets]
    return batch, targets


def _train_step(model: torch.nn.Module, loss: LossConfig, builtin_dir: Path, size: int, device: torch.device,
                use_pseudo_labels: bool, use_contrastive: bool) -> dict[str, float]:
    """One optimiser step through the stage objective, as loop.py runs it (bf16 autocast on CUDA)."""
    model = model.to(device)
    objective = Objective(model, loss, use_pseudo_labels, use_contrastive)
    optimizer = torch.optim.AdamW(param_groups(model, 1e-4, 0.1, 0.05))
    batch, targets = _batch(builtin_dir, size, device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        terms = objective(batch.weak.to(device), batch.strong.to(device), batch.crop_boxes, batch.strong_flipped,
                          targets, batch.labeled, (1.0, 1.0), generator)
    terms["loss"].backward()
    optimizer.step()
    for key, value in terms.items():
        assert value.device.type == device.type, key
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.device.type == device.type and torch.isfinite(g).all() for g in grads)
    values = {k: float(v.detach()) for k, v in terms.items()}
    assert all(math.isfinite(v) for v in values.values()), values
    return values


def test_student_training_step(builtin_dir, device):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(ModelConfig()), NAMES)
    values = _train_step(model, LossConfig(num_points=64, num_negatives=8, max_anchors=64), builtin_dir, 64, device,
                         use_pseudo_labels=True, use_contrastive=True)
    assert values["loss_sup"] > 0 and values["loss_pl"] > 0 and values["loss_con"] > 0


def _tiny_teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=4, embed_dim=8, image_size=64), NAMES)


def test_vfm_teacher_finetune_step(builtin_dir, device):
    values = _train_step(_tiny_teacher(), LossConfig(), builtin_dir, 64, device, use_pseudo_labels=False,
                         use_contrastive=False)
    assert values["loss_sup"] > 0 and values["loss_con"] == 0.0


def test_vfm_teacher_selftrain_step_with_contrastive(builtin_dir, device):
    values = _train_step(_tiny_teacher(), LossConfig(num_negatives=8, max_anchors=64), builtin_dir, 64, device,
                         use_pseudo_labels=True, use_contrastive=True)
    assert values["loss_sup"] > 0 and values["loss_pl"] > 0 and values["loss_con"] > 0


def test_sampler_and_info_nce(device):
    torch.manual_seed(0)
    mask_logits = torch.randn(1, 6, 8, 8, device=device)
    class_logits = torch.randn(1, 6, 4, device=device)
    qhat = sampling_embedding(mask_logits, class_logits, "fusion")[0]  # (64, E)
    generator = torch.Generator(device=device).manual_seed(0)
    neg = sample_negatives(qhat, 16, 1.0, generator)
    assert neg.device.type == device.type and neg.shape == (64, 16) and int(neg.max()) < 64
    emb = torch.nn.functional.normalize(torch.randn(64, 8, device=device), dim=1).requires_grad_()
    loss = info_nce(emb, emb.detach().roll(1, 0), emb.detach(), neg, 0.1)
    loss.backward()
    assert loss.device.type == device.type and math.isfinite(float(loss.detach())) and torch.isfinite(emb.grad).all()


def test_evaluation(builtin_dir, device):
    from sskd_ray.eval.model_eval import evaluate_model

    torch.manual_seed(0)
    model = build_model(tiny_model_config(ModelConfig()), NAMES).to(device)
    metrics, predictions = evaluate_model(model, str(builtin_dir / "val.json"), str(builtin_dir / "images"), 64,
                                          device=device)
    assert 0.0 <= metrics["mask_AP"] <= 100.0 and predictions
    assert all(p["image_id"] >= 1_000_000 for p in predictions)


@pytest.fixture
def gpu_ray():
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.gpu
@needs_cuda
def test_labeling_with_one_gpu_actor(builtin_dir, gpu_ray, tmp_path):
    """Ray Data labeling with an actor that holds the GPU: its model runs on CUDA, every image is labeled."""
    from sskd_ray.config import LabelConfig
    from sskd_ray.label.pipeline import run_labeling
    from sskd_ray.label.run import resolve_teacher
    from sskd_ray.label.sources import list_images

    cfg = load_config([REPO / "configs" / "default.yaml", REPO / "configs" / "smoke.yaml"])
    teacher = resolve_teacher(cfg, "builtin", smoke=True)
    listing = list_images(str(builtin_dir / "images" / "val"))
    label_cfg = replace(LabelConfig(), num_actors=1, num_gpus_per_actor=1.0, images_per_shard=4, score_threshold=0.0)
    summary = run_labeling(listing, str(tmp_path / "store"), teacher, label_cfg)
    assert summary["images_labeled"] == len(listing) and summary["images_skipped"] == 0
    assert summary["device"] == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_train_stage_on_gpu(builtin_dir, gpu_ray, tmp_path):
    """A Ray Train stage with use_gpu: one worker on the GPU (nccl process group), bf16 autocast, an
    evaluated model at the end, finite losses in its history."""
    import json

    from sskd_ray.train.pipeline import prepare_data, stage_specs
    from sskd_ray.train.stages import run_stage

    cfg = load_config([REPO / "configs" / "default.yaml", REPO / "configs" / "smoke.yaml"])
    data = prepare_data(cfg, str(tmp_path / "run"))
    spec = stage_specs(cfg, data, str(tmp_path / "run"))["distill"]
    spec = replace(spec, folder=str(tmp_path / "stage"), storage=str(tmp_path / "ray_train"),
                   stage=replace(spec.stage, iterations=4, checkpoint_every=2, use_gpu=True, use_pseudo_labels=False))
    metrics = run_stage(spec, f"sqlite:///{tmp_path / 'mlflow.db'}", "test")
    assert metrics["iterations"] == 4 and metrics["mask_AP"] is not None
    history = json.loads((tmp_path / "stage" / "history.json").read_text())
    losses = [row["loss"] for row in history if "loss" in row]
    assert losses and all(math.isfinite(v) for v in losses)


def test_category_ids_come_from_the_model_not_the_val_json_order(builtin_dir, tmp_path):
    """A val json listing its categories in another order scores the same when the model's own ids are
    passed (the stage passes the ids stored with the model); the json's order would mislabel classes."""
    import json

    from sskd_ray.eval.model_eval import evaluate_model

    torch.manual_seed(0)
    model = build_model(tiny_model_config(ModelConfig()), NAMES)
    val = json.loads((builtin_dir / "val.json").read_text())
    model_ids = [c["id"] for c in val["categories"]]
    val["categories"] = val["categories"][::-1]
    shuffled = tmp_path / "val.json"
    shuffled.write_text(json.dumps(val))
    images = str(builtin_dir / "images")
    _, reference = evaluate_model(model, str(builtin_dir / "val.json"), images, 64, category_ids=model_ids)
    _, ours = evaluate_model(model, str(shuffled), images, 64, category_ids=model_ids)
    _, naive = evaluate_model(model, str(shuffled), images, 64)
    assert [p["category_id"] for p in ours] == [p["category_id"] for p in reference]
    assert [p["category_id"] for p in naive] != [p["category_id"] for p in reference]
