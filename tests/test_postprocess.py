"""Pseudo-label selection (models/postprocess.select_instances): one class per query, the threshold on
the fused score, class-agnostic mask NMS; hand-built SegOutputs with known answers, on every device."""
import math

import pytest
import torch

from sskd_ray.models.outputs import SegOutput
from sskd_ray.models.postprocess import instances_from_output, mask_iou, mask_nms, select_instances

BIG = 20.0  # a mask logit whose sigmoid is 1 to float precision: mask quality 1


def _output(masks: list[torch.Tensor], class_probs: list[list[float]], device) -> SegOutput:
    """Queries with the given binary 8x8 masks and class probabilities (last = no object), as logits:
    softmax(log p) = p when the row sums to 1."""
    mask_logits = torch.stack([torch.where(m, BIG, -BIG) for m in masks])[None].to(device)  # (1, N, 8, 8)
    class_logits = torch.tensor(class_probs, device=device).log()[None]  # (1, N, C + 1)
    return SegOutput(mask_logits, class_logits, torch.zeros(1, 4, 8, 8, device=device))


def _box(y0, y1, x0, x1) -> torch.Tensor:
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_one_class_per_query_where_the_top_k_path_gives_two(device):
    # query 0 is 0.5 class 0 and 0.4 class 1: both beat 0.3, yet it is one object
    out = _output([_box(0, 4, 0, 4), _box(4, 8, 4, 8)], [[0.5, 0.4, 0.0, 0.1], [0.0, 0.0, 0.05, 0.95]], device)
    (kept,) = select_instances(out, [(8, 8)], score_threshold=0.3, nms_iou=0.5)
    assert [(i.label, round(i.score, 4)) for i in kept] == [(0, 0.5)]
    assert kept[0].mask.sum() == 16 and kept[0].mask[:4, :4].all()
    (top,) = instances_from_output(out, [(8, 8)], score_threshold=0.3, top_k=4)  # evaluation keeps both
    assert sorted(i.label for i in top) == [0, 1]


def test_threshold_applies_to_class_probability_times_mask_quality(device):
    # both 0.5 in class; query 0's mask is certain (quality 1 -> 0.5), query 1's logits are 0.5 inside
    # its mask (quality sigmoid(0.5) = 0.6225 -> fused 0.311), query 2 the same at 0.4 (0.249)
    out = _output([_box(0, 4, 0, 4), _box(4, 8, 0, 4), _box(0, 4, 4, 8)],
                  [[0.5, 0.0, 0.0, 0.5], [0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.4, 0.6]], device)
    out.mask_logits[0, 1][out.mask_logits[0, 1] > 0] = 0.5
    out.mask_logits[0, 2][out.mask_logits[0, 2] > 0] = 0.5
    (kept,) = select_instances(out, [(8, 8)], score_threshold=0.3, nms_iou=0.5)
    quality = 1 / (1 + math.exp(-0.5))
    assert [i.label for i in kept] == [0, 1]
    assert kept[1].score == pytest.approx(0.5 * quality, abs=1e-5)  # 0.311: passes on the fused score
    (loose,) = select_instances(out, [(8, 8)], score_threshold=0.2, nms_iou=0.5)
    assert [i.label for i in loose] == [0, 1, 2] and loose[2].score == pytest.approx(0.4 * quality, abs=1e-5)
    (strict,) = select_instances(out, [(8, 8)], score_threshold=0.32, nms_iou=0.5)  # 0.5 class prob, 0.31 fused
    assert [i.label for i in strict] == [0]


def test_nms_drops_a_duplicate_and_keeps_a_distinct_overlapping_mask(device):
    a = _box(0, 4, 0, 4)  # 16 px
    dup = _box(0, 4, 0, 3)  # 12 px inside a: IoU 12/16 = 0.75
    near = _box(2, 6, 2, 6)  # 16 px, 4 shared with a: IoU 4/28 = 0.143
    out = _output([dup, a, near], [[0.0, 0.8, 0.0, 0.2], [0.9, 0.0, 0.0, 0.1], [0.0, 0.0, 0.7, 0.3]], device)
    (kept,) = select_instances(out, [(8, 8)], score_threshold=0.3, nms_iou=0.5)
    assert [(i.label, round(i.score, 4)) for i in kept] == [(0, 0.9), (2, 0.7)]  # the class-1 duplicate is gone
    (loose,) = select_instances(out, [(8, 8)], score_threshold=0.3, nms_iou=0.8)  # 0.75 < 0.8: both kept
    assert [i.label for i in loose] == [0, 1, 2]
    (capped,) = select_instances(out, [(8, 8)], score_threshold=0.3, nms_iou=0.8, max_instances=2)
    assert [i.label for i in capped] == [0, 1]


def test_mask_iou_and_greedy_nms_by_hand(device):
    masks = torch.stack([_box(0, 4, 0, 4), _box(0, 4, 0, 3), _box(0, 4, 1, 4), torch.zeros(8, 8, dtype=torch.bool)])
    masks = masks.to(device)
    iou = mask_iou(masks)
    assert iou.device == masks.device
    # 0-1: 12/16; 0-2: 12/16; 1-2: 8/16 (cols 1-2 shared, cols 0-3 in the union); empty: 0
    expected = torch.tensor([[1, .75, .75, 0], [.75, 1, .5, 0], [.75, .5, 1, 0], [0, 0, 0, 0]], device=device)
    assert torch.allclose(iou, expected)
    # greedy, scores 2 > 1 > 0: mask 2 kept; 1 overlaps it at 0.5 (>= 0.5: dropped); 0 overlaps 2 at 0.75
    keep = mask_nms(masks[:3], torch.tensor([0.1, 0.5, 0.9], device=device), 0.5)
    assert keep.tolist() == [False, False, True]
    # at 0.6: 1 survives 2 (0.5 < 0.6), 0 falls to 2 (0.75); scores reversed at 0.7: 0 drops 1 and 2
    assert mask_nms(masks[:3], torch.tensor([0.1, 0.5, 0.9], device=device), 0.6).tolist() == [False, True, True]
    assert mask_nms(masks[:3], torch.tensor([0.9, 0.5, 0.1], device=device), 0.7).tolist() == [True, False, False]


def test_suppressed_mask_does_not_suppress_others(device):
    # a chain: 0 overlaps 1 (IoU 3/6), 1 overlaps 2 (3/7), 0 and 2 barely (1/8); scores 0 > 1 > 2.
    # greedy: 1 falls to 0, so 2 (which only 1 covered) stays; Fast NMS would drop 2 as well
    masks = torch.stack([_box(0, 8, 0, 4), _box(0, 8, 1, 6), _box(0, 8, 3, 8)]).to(device)
    iou = mask_iou(masks)
    assert iou[0, 1] == pytest.approx(3 / 6) and iou[1, 2] == pytest.approx(3 / 7) and iou[0, 2] == pytest.approx(1 / 8)
    keep = mask_nms(masks, torch.tensor([0.9, 0.8, 0.7], device=device), 0.4)
    assert keep.tolist() == [True, False, True]


def test_no_candidates_and_batch_geometry(device):
    out = _output([_box(0, 4, 0, 4)], [[0.1, 0.1, 0.1, 0.7]], device)  # nothing reaches 0.3
    assert select_instances(out, [(8, 8)], score_threshold=0.3) == [[]]
    # two images padded into one 8x8 frame: image 1's content is its top-left 4x4, at original size 2x2
    both = _output([_box(0, 4, 0, 4)], [[0.9, 0.0, 0.0, 0.1]], device)
    both = SegOutput(both.mask_logits.expand(2, -1, -1, -1), both.class_logits.expand(2, -1, -1), both.embeddings)
    first, second = select_instances(both, [(16, 16), (2, 2)], image_sizes=[(8, 8), (4, 4)], input_size=(8, 8))
    assert first[0].mask.shape == (16, 16) and first[0].mask.sum() == 64
    assert second[0].mask.shape == (2, 2) and second[0].mask.all()


def test_grounding_dino_sam2_teacher_output_gives_one_instance_per_query_and_no_duplicate(device):
    """The other teacher kind (fused Grounding-DINO class scores x SAM2 IoU, models/teacher.py) through
    the same selection, on its device: at most one instance per query, each under its query's best
    class, no two kept masks at IoU >= nms_iou."""
    from sskd_ray.config import ModelConfig
    from sskd_ray.models.build import build_model

    torch.manual_seed(0)
    names = ["cat", "dog", "traffic light"]
    teacher = build_model(ModelConfig(kind="gdino_sam2", preset="tiny", num_queries=5, embed_dim=16), names)
    teacher = teacher.to(device).eval()
    with torch.no_grad():
        out = teacher(torch.rand(1, 3, 64, 64, device=device))
    (kept,) = select_instances(out, [(48, 64)], score_threshold=0.0, nms_iou=0.5)
    best = set(out.class_logits[0].softmax(-1)[:, :-1].argmax(-1).tolist())
    assert 0 < len(kept) <= out.class_logits.shape[1] and {i.label for i in kept} <= best
    assert [i.score for i in kept] == sorted((i.score for i in kept), reverse=True)
    masks = torch.stack([torch.from_numpy(i.mask) for i in kept])
    assert masks.shape[1:] == (48, 64)
    iou = mask_iou(masks)
    assert (iou[~torch.eye(len(kept), dtype=torch.bool)] < 0.5).all()
