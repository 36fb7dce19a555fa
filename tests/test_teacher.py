"""The Grounding-DINO + SAM2 teacher: fused scores, checkpoint classes, the released config, frozen
text encoder, chunked prompts, one forward per step, native-aspect frames, devices."""
import pytest
import torch
import transformers
from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

from conftest import DEVICE_PARAMS
from sskd_ray.config import ModelConfig
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.losses.teacher_adaptation import adaptation_losses, teacher_losses
from sskd_ray.models.build import build_model
from sskd_ray.models.freeze import param_groups
from sskd_ray.models.prompts import chunk_prompts
from sskd_ray.models.teacher_configs import (build_tiny_bert_tokenizer, detector_class, full_teacher_configs,
                                             tiny_teacher_configs)
from sskd_ray.models.teacher_frames import (PAD_LOGIT, long_side_size, masks_to_boxes,
                                            short_side_size, square_to_frame)

NAMES = list(CLASS_NAMES)
DEVICES = DEVICE_PARAMS  # cpu everywhere; cuda marked `gpu`, skipped with "needs CUDA" without one
def _ade_names():
    words = ("wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|earth|door|"
             "table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|rug|field|armchair|"
             "seat|fence|desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|box|column|signboard|chest of drawers|"
             "counter|sand|sink|skyscraper|fireplace|refrigerator|grandstand|path|stairs|runway|case|pool table|"
             "pillow|screen door|stairway|river|bridge|bookcase|blind|coffee table|toilet|flower|book|hill|bench|"
             "countertop|stove|palm|kitchen island|computer|swivel chair|boat|bar|arcade machine|hovel|bus|towel|"
             "light|truck|tower|chandelier|awning|streetlight|booth|television receiver|airplane|dirt track|apparel|"
             "pole|land|bannister|escalator|ottoman|bottle|buffet|poster|stage|van|ship|fountain|conveyer belt|"
             "canopy|washer|plaything|swimming pool|stool|barrel|basket|waterfall|tent|bag|minibike|cradle|oven|"
             "ball|food|step|tank|trade name|microwave|pot|animal|bicycle|lake|dishwasher|screen|blanket|sculpture|"
             "hood|sconce|vase|traffic light|tray|ashcan|fan|pier|crt screen|plate|monitor|bulletin board|shower|"
             "radiator|glass|clock|flag")
    return words.split("|")


def _tiny(device):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16), NAMES).to(device).eval()


def _targets(device, h=64, w=64):
    masks = torch.zeros(3, h, w, dtype=torch.bool, device=device)
    masks[0, 5:20, 5:30] = True
    masks[1, 30:60, 10:20] = True
    masks[2, 40:50, 40:60] = True
    return [{"labels": torch.tensor([0, 9], device=device), "masks": masks[:2]},
            {"labels": torch.tensor([3], device=device), "masks": masks[2:]},
            {"labels": torch.tensor([], dtype=torch.long, device=device), "masks": masks[:0]}]


@pytest.mark.parametrize("device", DEVICES)
def test_fused_score_is_class_probability_times_predicted_iou(device):
    teacher = _tiny(device)
    seen = {}
    teacher.detector.register_forward_hook(lambda m, i, o: seen.setdefault("det", o))
    teacher.segmenter.register_forward_hook(lambda m, i, o: seen.setdefault("seg", o))
    out = teacher(torch.rand(2, 3, 64, 64, device=device))
    det, iou = seen["det"], seen["seg"].iou_scores[:, :, 0]  # (B, N): what SAM2 predicts
    assert ((iou >= 0) & (iou <= 1)).all()  # SAM2's IoU head ends in a sigmoid: probabilities
    # class probability by Grounding-DINO's own label maps: max token logit of the class's phrase
    maps = build_label_maps(det.logits, teacher.input_ids)[0].bool()  # (C, T)
    probs = det.logits[:, :, None, :].masked_fill(~maps, float("-inf")).amax(-1).sigmoid()  # (B, Q, C)
    top = probs.amax(-1).topk(5, dim=1).indices
    probs = probs.gather(1, top[..., None].expand(-1, -1, len(NAMES)))
    expected = (probs * iou[..., None]).clamp(1e-6, 1 - 1e-6)
    assert torch.allclose(out.class_logits[..., :-1].exp(), expected, rtol=1e-4, atol=1e-6)
    assert torch.allclose(out.class_logits[..., -1].exp(), (1 - expected.amax(-1)).clamp_min(1e-6), rtol=1e-4)


def test_detector_class_comes_from_config_json_not_the_folder_name(tmp_path):
    tokenizer, vocab = build_tiny_bert_tokenizer(NAMES)
    plain_cfg, seg_cfg = tiny_teacher_configs(128, vocab)
    mm_cfg, _ = tiny_teacher_configs(128, vocab, mm=True)
    mm_dir, plain_dir, seg_dir = tmp_path / "grounding-dino-tiny", tmp_path / "mm_grounding_dino_tiny", tmp_path / "sam2"
    torch.manual_seed(0)
    mm = transformers.MMGroundingDinoForObjectDetection(mm_cfg)
    mm.save_pretrained(mm_dir)  # an mm-Grounding-DINO in a folder named like a plain one
    tokenizer.save_pretrained(mm_dir)
    transformers.GroundingDinoForObjectDetection(plain_cfg).save_pretrained(plain_dir)
    transformers.Sam2Model(seg_cfg).save_pretrained(seg_dir)
    assert detector_class(str(mm_dir)) is transformers.MMGroundingDinoForObjectDetection
    assert detector_class(str(plain_dir)) is transformers.GroundingDinoForObjectDetection
    with pytest.raises(ValueError, match="mm-grounding-dino.*drop weights"):
        detector_class(str(mm_dir), forced="grounding-dino")
    cfg = ModelConfig(kind="gdino_sam2", preset="full", pretrained=str(mm_dir), detector=str(mm_dir),
                      segmenter=str(seg_dir), num_queries=5, embed_dim=16)
    teacher = build_model(cfg, NAMES)
    assert type(teacher.detector) is transformers.MMGroundingDinoForObjectDetection
    ref = mm.state_dict()
    for name, value in teacher.detector.state_dict().items():  # every weight arrived
        assert torch.equal(value, ref[name]), name


def test_full_teacher_config_is_the_released_mm_grounding_dino_large():
    det, seg = full_teacher_configs()
    assert det.model_type == "mm-grounding-dino"
    assert det.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert det.num_feature_levels == 5 and det.num_queries == 900 and det.max_text_len == 256
    assert (det.backbone_config.embed_dim, det.backbone_config.depths, det.backbone_config.window_size) == \
        (192, [2, 2, 18, 2], 12)
    with torch.device("meta"):
        model = transformers.MMGroundingDinoForObjectDetection(det)
    assert len(model.model.input_proj_vision) == 5
    assert model.model.input_proj_vision[0][0].in_channels == 192  # the stride-4 stage 1 feeds level 0
    assert 341e6 < sum(p.numel() for p in model.parameters()) < 344e6


@pytest.mark.parametrize("freeze", [True, False])
def test_text_encoder_freezing_is_a_config_choice(freeze):
    teacher = build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16,
                                      freeze_text_encoder=freeze), NAMES)
    text = {id(p) for p in teacher.detector.model.text_backbone.parameters()}
    assert len(text) > 0
    assert all(p.requires_grad != freeze for p in teacher.detector.model.text_backbone.parameters())
    in_groups = {id(p) for g in param_groups(teacher, 1e-4, 0.1, 0.01) for p in g["params"]}
    assert (text & in_groups == set()) == freeze and (text <= in_groups) == (not freeze)


@pytest.mark.parametrize("names", [_ade_names(), [f"class_{i}" for i in range(1, 101)]], ids=["ade150", "fallback"])
def test_long_vocabulary_is_chunked_and_every_class_is_reachable(names):
    assert len(names) in (150, 100)
    tokenizer, _ = build_tiny_bert_tokenizer(names)
    chunks = chunk_prompts(names, tokenizer, 32)
    assert len(chunks.input_ids) > 1 and all(len(ids) <= 32 for ids in chunks.input_ids)
    assert sorted(c for members in chunks.chunk_classes for c in members) == list(range(len(names)))
    for c, name in enumerate(names):  # the span of class c decodes back to its own name
        s, e = chunks.class_span[c]
        assert tokenizer.decode(chunks.input_ids[chunks.class_chunk[c]][s:e]).replace(" ", "") == \
            name.replace(" ", "").lower()
    teacher = build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16), names).eval()
    assert teacher.input_ids.shape[0] == len(chunks.input_ids)
    with torch.no_grad():
        run = teacher.run(torch.rand(1, 3, 64, 64))
        probs = teacher.class_probs(run.det.logits, 1)  # (1, K*Q, C)
        out = teacher.fuse(run)
    q = run.det.logits.shape[1]
    assert probs.shape == (1, len(chunks.input_ids) * q, len(names))
    reachable = (probs[0] > 0).any(0)
    assert reachable.all()  # every class scores on the queries of its own chunk ...
    own = torch.tensor(chunks.class_chunk)
    chunk_of_query = torch.arange(len(chunks.input_ids)).repeat_interleave(q)
    assert ((probs[0] > 0) == (chunk_of_query[:, None] == own[None])).all()  # ... and only there
    assert out.class_logits.shape == (1, 5, len(names) + 1) and torch.isfinite(out.class_logits).all()
    # a target of the last class trains through its chunk's rows
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 10:40] = True
    losses = adaptation_losses(teacher, torch.rand(1, 3, 64, 64), [{"labels": torch.tensor([len(names) - 1]),
                                                                 "masks": masks}])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("device", DEVICES)
def test_one_pass_gives_the_output_and_each_groups_losses(device):
    """The objective's teacher step: one `run`, the losses of each group from it, the fused output from
    it; each group's losses equal those of a forward of its own images."""
    teacher = _tiny(device)
    calls = {"det": 0, "vision": 0}
    teacher.detector.register_forward_hook(lambda *a: calls.__setitem__("det", calls["det"] + 1))
    teacher.segmenter.vision_encoder.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    images = torch.rand(3, 3, 64, 64, device=device)
    targets = _targets(device)
    groups = {"sup": (torch.tensor([0], device=device), targets[:1]),
              "pl": (torch.tensor([1, 2], device=device), targets[1:])}
    p = teacher.run(images)
    losses = {name: teacher_losses(teacher, p, idx, tg) for name, (idx, tg) in groups.items()}
    out = teacher.fuse(p, masks_with_grad=False)
    assert calls == {"det": 1, "vision": 1}
    assert out.mask_logits.shape[:2] == (3, 5)
    for name, (idx, tg) in groups.items():
        alone = adaptation_losses(teacher, images[idx], tg)
        for key in ("loss_detection", "loss_mask"):
            assert torch.allclose(losses[name][key], alone[key], rtol=1e-4, atol=1e-5), (name, key)
    assert losses["sup"]["loss_mask"] > 0 and losses["pl"]["loss_mask"] > 0
    # L_con reads masks and scores detached: they hold no graph (SAM2's N-prompt decoding is the step's
    # largest activation); the embeddings do, and equal the inference forward's
    assert not out.mask_logits.requires_grad and not out.class_logits.requires_grad
    assert out.embeddings.requires_grad
    with torch.no_grad():
        plain = teacher(images)
    assert torch.allclose(out.mask_logits, plain.mask_logits, atol=1e-5)
    assert torch.allclose(out.embeddings.detach(), plain.embeddings, atol=1e-6)
    sum(v for g in losses.values() for v in g.values()).backward()  # the shared graph trains both groups


def test_frame_sizes_by_hand():
    assert short_side_size(1024, 2048, 800, 1333) == (666, 1333)  # long side caps: 1024 * 1333 / 2048 = 666.5
    assert short_side_size(480, 640, 800, 1333) == (800, 1067)
    assert long_side_size(96, 32, 128) == (128, 43)
    assert long_side_size(64, 128, 128) == (64, 128)


@pytest.mark.parametrize("device", DEVICES)
def test_boxes_and_masks_round_trip_between_input_and_sam2_frames(device):
    # a 2:1 image (64 x 128) and a 1:3 image (96 x 32) padded into one 96 x 128 frame
    sizes, seg_sizes = [(64, 128), (96, 32)], [(64, 128), (128, 43)]
    boxes_px = [torch.tensor([40.0, 10.0, 100.0, 50.0], device=device), torch.tensor([8.0, 30.0, 24.0, 60.0],
                                                                                    device=device)]
    sam_boxes = [b / b.new_tensor([w, h, w, h]) * b.new_tensor([sw, sh, sw, sh])  # as the teacher scales them
                 for b, (h, w), (sh, sw) in zip(boxes_px, sizes, seg_sizes)]
    assert torch.allclose(sam_boxes[0], torch.tensor([40.0, 10.0, 100.0, 50.0], device=device))
    assert torch.allclose(sam_boxes[1], torch.tensor([10.75, 40.0, 32.25, 80.0], device=device))
    square = torch.full((2, 1, 128, 128), -10.0, device=device)  # SAM2-frame logits: +10 on pixels inside each box
    square[0, 0, 10:50, 40:100] = 10.0
    square[1, 0, 40:80, 11:32] = 10.0  # pixel centres inside 10.75..32.25
    back = square_to_frame(square, [(64 / 128, 1.0), (1.0, 43 / 128)], sizes, (96, 128), PAD_LOGIT)
    expected = torch.zeros(2, 96, 128, dtype=torch.bool, device=device)
    expected[0, 10:50, 40:100] = True
    expected[1, 30:60, 8:24] = True
    assert torch.equal(back[:, 0] > 0, expected)
    assert (back[0, 0, 64:] == PAD_LOGIT).all() and (back[1, 0, :, 32:] == PAD_LOGIT).all()


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_native_aspect_batch_covers_the_input_frame(device):
    teacher = _tiny(device)
    images = torch.rand(2, 3, 96, 128, device=device)
    out = teacher(images, [(64, 128), (96, 32)])
    assert out.mask_logits.shape == (2, 5, 24, 32)  # the frame at SAM2's mask stride (128 / 4 = 32 long side)
    assert (out.mask_logits[0, :, 16:] == PAD_LOGIT).all() and (out.mask_logits[1, :, :, 8:] == PAD_LOGIT).all()
    assert (out.mask_logits[0, :, :16] > PAD_LOGIT).all() and (out.mask_logits[1, :, :, :8] > PAD_LOGIT).all()
    assert out.mask_logits.device.type == out.class_logits.device.type == out.embeddings.device.type == device
    with pytest.raises(ValueError, match="does not fit"):
        teacher(images, [(64, 130), (96, 32)])


@pytest.mark.parametrize("device", DEVICES)
def test_masks_to_boxes_on_the_masks_device(device):
    masks = torch.zeros(2, 8, 10, dtype=torch.bool, device=device)
    masks[0, 2:5, 3:9] = True
    boxes = masks_to_boxes(masks)
    assert boxes.device.type == device
    assert boxes.tolist() == [[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def test_meta_sam2_backend_gives_the_same_fused_contract():
    pytest.importorskip("sam2", reason="Meta's sam2 package (extra [sam2]) is not installed; `make install` adds it")
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16,
                                      segmenter_backend="sam2"), NAMES).eval()
    assert type(teacher.segmenter).__name__ == "SAM2Base" and teacher.segmenter_size == 1024
    seen = {}
    teacher.detector.register_forward_hook(lambda m, i, o: seen.setdefault("det", o))
    teacher.segmenter.sam_mask_decoder.register_forward_hook(lambda m, i, o: seen.setdefault("iou", []).append(o[1]))
    out = teacher(torch.rand(2, 3, 64, 96), [(64, 96), (48, 32)])
    assert out.mask_logits.shape == (2, 5, 64, 96) and out.embeddings.shape == (2, 16, 43, 64)
    assert (out.mask_logits[1, :, 48:] == PAD_LOGIT).all() and (out.mask_logits[1, :, :, 32:] == PAD_LOGIT).all()
    iou = torch.stack([i[:, 0] for i in seen["iou"]])  # (B, N): the decoder's own output, sigmoid applied inside
    assert teacher.segmenter.iou_prediction_use_sigmoid and ((iou >= 0) & (iou <= 1)).all()
    probs = teacher.class_probs(seen["det"].logits, 2)
    probs = probs.gather(1, probs.amax(-1).topk(5, dim=1).indices[..., None].expand(-1, -1, len(NAMES)))
    assert torch.allclose(out.class_logits[..., :-1].exp(), (probs * iou[..., None]).clamp(1e-6, 1 - 1e-6), rtol=1e-4)
    masks = torch.zeros(1, 64, 96, dtype=torch.bool)
    masks[0, 10:40, 20:60] = True
    losses = adaptation_losses(teacher, torch.rand(1, 3, 64, 96), [{"labels": torch.tensor([2]), "masks": masks}])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None for p in teacher.segmenter.sam_mask_decoder.parameters())
    assert all(not p.requires_grad for p in teacher.segmenter.memory_attention.parameters())


def test_gradient_checkpointing_keeps_weights_losses_and_gradients():
    """The paper configs recompute the detector's layers in backward: same state-dict keys (checkpoints
    load either way), same losses and gradients, fewer activations kept."""
    from dataclasses import replace

    cfg = ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16)
    torch.manual_seed(0)
    plain = build_model(cfg, NAMES).eval()
    torch.manual_seed(0)
    ckpt = build_model(replace(cfg, gradient_checkpointing=True), NAMES).eval()
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    ckpt.load_state_dict(plain.state_dict())
    assert any("CheckpointWrapper" in type(m).__name__ for m in ckpt.detector.modules())
    images = torch.rand(3, 3, 64, 64)
    targets = _targets("cpu")
    grads = []
    for model in (plain, ckpt):
        loss = sum(adaptation_losses(model, images, targets).values())
        loss.backward()
        grads.append((float(loss.detach()), model.detector.model.encoder.layers[0].state_dict()))
        p = dict(model.named_parameters())
        grads.append({n.replace("._checkpoint_wrapped_module", ""): q.grad.clone() for n, q in p.items()
                      if q.grad is not None and "encoder.layers.0" in n})
    assert grads[0][0] == pytest.approx(grads[2][0], rel=1e-5)
    assert grads[1].keys() == grads[3].keys() and grads[1]
    for name in grads[1]:
        torch.testing.assert_close(grads[1][name], grads[3][name], rtol=1e-4, atol=1e-6)


def test_mask_term_weights_come_from_the_loss_config():
    """loss_mask = w_mask * BCE + w_dice * Dice (losses/teacher_adaptation.py); the objective passes
    LossConfig's mask_weight and dice_weight, as the student's set loss uses them."""
    from sskd_ray.config import LossConfig
    from sskd_ray.train.objective import Objective

    teacher = _tiny("cpu")
    images, targets = torch.rand(3, 3, 64, 64), _targets("cpu")
    with torch.no_grad():
        p = teacher.run(images)
        idx = torch.arange(3)
        term = {w: teacher_losses(teacher, p, idx, targets, *w)["loss_mask"] for w in ((1, 0), (0, 1), (5, 5))}
        detection = teacher_losses(teacher, p, idx, targets)["loss_detection"]
    assert term[(1, 0)] > 0 and term[(0, 1)] > 0
    torch.testing.assert_close(term[(5, 5)], 5 * (term[(1, 0)] + term[(0, 1)]))
    objective = Objective(teacher, LossConfig(mask_weight=0.0, dice_weight=2.0), use_pseudo_labels=False,
                          use_contrastive=False)
    with torch.no_grad():
        terms = objective(images, images, torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool), targets,
                          torch.ones(3, dtype=torch.bool), (1.0, 1.0))
    torch.testing.assert_close(terms["loss_sup"], detection + 2 * term[(0, 1)], rtol=1e-4, atol=1e-5)
