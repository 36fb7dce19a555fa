import time

import pytest
import torch

from sskd_ray.config import Config, ModelConfig
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.losses.teacher_adaptation import adaptation_losses
from sskd_ray.models.build import build_model, paper_model_config, tiny_model_config
from sskd_ray.models.freeze import apply_freeze
from sskd_ray.models.maskformer import count_parameters
from sskd_ray.models.postprocess import instances_from_output, instances_to_coco
from sskd_ray.models.weights import WeightsNotFoundError, load_pretrained

NAMES = list(CLASS_NAMES)


def _check_contract(out, batch, num_queries, embed_dim):
    assert out.mask_logits.shape[:2] == (batch, num_queries)
    assert out.class_logits.shape == (batch, num_queries, len(NAMES) + 1)
    assert out.embeddings.shape[:2] == (batch, embed_dim)
    norms = out.embeddings.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


@pytest.mark.parametrize("encoder, neck", [("dinov2", "dpt"), ("dinov2", "fpn"), ("resnet50", "fpn"),
                                           ("sam2_hiera", "fpn"), ("efficientnet_lite0", "fpn")])
def test_student_variants_forward_backward(encoder, neck):
    cfg = tiny_model_config(ModelConfig(encoder=encoder, neck=neck, freeze=["encoder"]))
    model = build_model(cfg, NAMES)
    apply_freeze(model, cfg.freeze)
    out = model(torch.rand(2, 3, 64, 64))
    _check_contract(out, 2, cfg.num_queries, cfg.embed_dim)
    assert len(out.aux) == cfg.decoder_layers  # one prediction before the first layer + one per layer
    loss = out.mask_logits.mean() + out.class_logits.mean() + out.embeddings[:, 0].mean()
    (loss + sum(m.mean() + c.mean() for m, c in out.aux)).backward()
    for name, p in model.named_parameters():
        if name.startswith("encoder."):
            assert p.grad is None and not p.requires_grad, name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) >= 0.9 * len(trainable)


def test_grounding_sam_teacher_contract_and_training():
    cfg = ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16,
                      freeze=["detector.model.backbone", "segmenter.vision_encoder"])
    teacher = build_model(cfg, NAMES)
    apply_freeze(teacher, cfg.freeze)
    _check_contract(teacher(torch.rand(2, 3, 64, 64)), 2, 5, 16)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 30:60, 10:20] = True
    targets = [{"labels": torch.tensor([0, 9]), "masks": masks}, {"labels": torch.tensor([], dtype=torch.long),
                                                                  "masks": masks[:0]}]
    losses = adaptation_losses(teacher, torch.rand(2, 3, 64, 64), targets)
    assert set(losses) == {"loss_detection", "loss_mask"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in teacher.named_parameters():
        if name.startswith(("detector.model.backbone", "segmenter.vision_encoder")):
            assert p.grad is None, name
    assert any(p.grad is not None for n, p in teacher.named_parameters() if n.startswith("segmenter.mask_decoder"))
    assert any(p.grad is not None for n, p in teacher.named_parameters() if n.startswith("detector.model.decoder"))


def test_freeze_typo_fails():
    model = build_model(tiny_model_config(ModelConfig()), NAMES)
    with pytest.raises(ValueError, match="encodr"):
        apply_freeze(model, ["encodr"])


def test_full_size_student_has_paper_scale():
    cfg = paper_model_config("student")
    cfg.pretrained = ""
    with torch.device("meta"):
        model = build_model(cfg, NAMES)
    assert 40e6 <= count_parameters(model) <= 65e6


def test_builtin_pair_sizes_and_contract():
    cfg = Config()
    teacher, student = build_model(cfg.teacher, NAMES), build_model(cfg.student, NAMES)
    assert count_parameters(teacher) > 1.4 * count_parameters(student)
    _check_contract(student(torch.rand(1, 3, 128, 128)), 1, cfg.student.num_queries, cfg.student.embed_dim)


def test_shipped_imagenet_weights_classify_a_real_photo():
    import numpy as np
    import skimage.data
    import timm
    from PIL import Image

    from sskd_ray.models.weights import load_efficientnet_lite

    for name, size in (("efficientnet_lite0", 224), ("efficientnet_lite2", 260)):
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(load_efficientnet_lite(name))
        model.eval()
        photo = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((size, size), Image.BICUBIC))
        x = (torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
        with torch.no_grad():
            top5 = model(x).topk(5).indices[0].tolist()
        assert top5[0] == 285, f"{name}: chelsea should be an Egyptian cat (285), got {top5}"  # a tabby cat photo
    # and the built-in student's encoder carries exactly these weights
    student = build_model(Config().student, NAMES)
    ref = load_efficientnet_lite("efficientnet_lite0", with_head=False)
    assert torch.equal(student.encoder.trunk.state_dict()["conv_stem.weight"], ref["conv_stem.weight"])


def test_uncached_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    from transformers import Dinov2Model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match="facebook/dinov2-small.*(huggingface-cli download|HF_HUB_OFFLINE)"):
        load_pretrained(Dinov2Model, "facebook/dinov2-small")
    assert time.monotonic() - start < 10


def test_postprocess_to_coco():
    from sskd_ray.models.outputs import SegOutput

    mask_logits = torch.full((1, 2, 8, 8), -5.0)
    mask_logits[0, 0, :4, :4] = 5.0  # query 0: top-left quarter
    class_logits = torch.full((1, 2, 4), -10.0)
    class_logits[0, 0, 1] = 10.0  # query 0: class 1, confident
    class_logits[0, 1, 3] = 10.0  # query 1: no object
    out = SegOutput(mask_logits, class_logits, torch.zeros(1, 4, 8, 8))
    (insts,) = instances_from_output(out, [(16, 16)], score_threshold=0.3)
    assert len(insts) == 1 and insts[0].label == 1 and insts[0].score > 0.95
    assert insts[0].mask.sum() == 64 and insts[0].mask[:8, :8].all()
    (res,) = instances_to_coco(insts, image_id=7, category_ids=[10, 20, 30])
    assert res["category_id"] == 20 and res["image_id"] == 7 and res["bbox"] == [0.0, 0.0, 8.0, 8.0]


def test_param_groups_give_the_backbone_its_own_lr_and_skip_decay_on_norms():
    from sskd_ray.models.freeze import no_decay_names, param_groups

    model = build_model(tiny_model_config(ModelConfig()), NAMES)
    groups = param_groups(model, lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    named = dict(model.named_parameters())
    no_decay = {id(named[n]) for n in no_decay_names(model)}
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    for g in groups:
        is_backbone = {id(p) in encoder_ids for p in g["params"]}
        assert len(is_backbone) == 1
        assert g["lr"] == pytest.approx(1e-4 if is_backbone.pop() else 1e-3)
        assert g["weight_decay"] == (0.0 if all(id(p) in no_decay for p in g["params"]) else 0.05)
    # learned queries and the level embedding are 2-D but decay-free; linear weights decay
    decoder = model.decoder
    for p in (decoder.query_feat.weight, decoder.query_pos.weight, decoder.level_embed.weight):
        assert id(p) in no_decay
    assert id(decoder.class_head.weight) not in no_decay and id(decoder.class_head.bias) in no_decay


def test_frozen_stages_keep_their_batchnorm_statistics():
    """Freezing the stem and first block of a CNN student also fixes their BatchNorm statistics: a
    training-mode forward leaves the running statistics alone and computes what eval mode computes,
    the later blocks still train with batch statistics, and the state dict keeps its keys (a frozen
    model's weights load into a freshly built one)."""
    frozen = ["encoder.trunk.conv_stem", "encoder.trunk.bn1", "encoder.trunk.blocks.0"]
    cfg = tiny_model_config(ModelConfig(encoder="efficientnet_lite0", freeze=frozen))
    model = build_model(cfg, NAMES)
    keys = set(model.state_dict())
    apply_freeze(model, cfg.freeze)
    assert set(model.state_dict()) <= keys
    trunk = model.encoder.trunk
    before = {n: b.clone() for n, b in trunk.named_buffers() if n.startswith(("bn1", "blocks.0", "blocks.1"))}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        stem_train = trunk.blocks[0](trunk.bn1(trunk.conv_stem(x)))
        model(x)
        trunk.eval()
        stem_eval = trunk.blocks[0](trunk.bn1(trunk.conv_stem(x)))
        trunk.train()
    torch.testing.assert_close(stem_train, stem_eval)
    after = dict(trunk.named_buffers())
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith(("bn1", "blocks.0")))
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("blocks.1") and "running" in n)
    fresh = build_model(cfg, NAMES)
    fresh.load_state_dict(model.state_dict())
