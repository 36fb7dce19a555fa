"""Pseudo-label quality against held-back ground truth (eval/pseudo_quality.py) and its report rows;
tiny hand-built cases with hand-counted matches."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from sskd_ray.data.coco import encode_rle, mask_to_bbox
from sskd_ray.eval.pseudo_quality import count_matches, pseudo_label_quality
from sskd_ray.eval.report import pseudo_label_section


def _cols(c0, c1, rows=(0, 8), shape=(8, 12)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows[0]:rows[1], c0:c1] = True
    return m


def _rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_matching_is_greedy_by_score_and_one_to_one():
    # two overlapping ground-truth masks (amodal, as after occlusion): G1 cols 0-5, G2 cols 1-6, class 3.
    # pA = G1 exactly: IoU 1 with G1, 5/7 with G2; pB = cols 0-3: IoU 4/6 with G1, 3/7 with G2
    g1, g2, pa, pb = _cols(0, 6), _cols(1, 7), _cols(0, 6), _cols(0, 4)
    gts, labels = [_rle(g1), _rle(g2)], np.array([3, 3])
    # pA first takes its best (G1); pB then has only G2 at 0.43 < 0.5: one match (an optimal assignment has 2)
    assert count_matches([_rle(pa), _rle(pb)], np.array([3, 3]), np.array([0.9, 0.8]), gts, labels) == 1
    # pB first takes G1 (0.67), pA then G2 (0.71): two
    assert count_matches([_rle(pa), _rle(pb)], np.array([3, 3]), np.array([0.8, 0.9]), gts, labels) == 2
    # the right mask under another class matches nothing; an exact duplicate matches once
    assert count_matches([_rle(pa)], np.array([4]), np.array([0.9]), gts, labels) == 0
    assert count_matches([_rle(pa), _rle(pa)], np.array([3, 3]), np.array([0.9, 0.9]), [_rle(g1)], labels[:1]) == 1
    assert count_matches([], np.array([]), np.array([]), gts, labels) == 0


def _result(image_id, category_id, mask, score):
    return {"image_id": image_id, "category_id": category_id, "segmentation": encode_rle(mask),
            "bbox": mask_to_bbox(mask), "score": score}


def _ann(ann_id, image_id, category_id, mask, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": encode_rle(mask),
            "bbox": mask_to_bbox(mask), "area": float(mask.sum()), "iscrowd": crowd}


@pytest.fixture
def tiny_pool():
    a, b = _cols(0, 4, rows=(0, 4)), _cols(4, 8, rows=(4, 8))  # image 1: class 1 top-left, class 2 below right
    c, e = _cols(0, 8, rows=(0, 4)), _cols(0, 4, rows=(0, 4))  # image 2: class 1 (and a crowd region); image 3: class 2
    gt = {"images": [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 12} for i in (1, 2, 3)],
          "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
          "annotations": [_ann(1, 1, 1, a), _ann(2, 1, 2, b), _ann(3, 2, 1, c),
                          _ann(4, 2, 1, _cols(8, 12, rows=(4, 8)), crowd=1), _ann(5, 3, 2, e)]}
    results = [_result(1, 1, a, 0.9),  # TP: A exactly
               _result(1, 1, _cols(0, 3, rows=(0, 4)), 0.8),  # A again (IoU 0.75): A is taken -> FP
               _result(1, 1, b, 0.7),  # B's mask under class 1 -> FP
               _result(2, 1, _cols(0, 3, rows=(0, 4)), 0.6),  # 12 of C's 32 px: IoU 0.375 -> FP
               _result(3, 2, _cols(0, 2, rows=(0, 4)), 0.5),  # 8 of E's 16 px: IoU exactly 0.5 -> TP
               _result(99, 1, a, 0.9)]  # an image outside the pool: ignored
    return gt, results


def test_precision_recall_and_counts_by_hand(tiny_pool):
    gt, results = tiny_pool
    q = pseudo_label_quality(gt, results)
    # 5 pool predictions, 2 matched; 4 non-crowd ground-truth instances over 3 images
    assert (q["predictions"], q["matched"], q["ground_truth"], q["images"]) == (5, 2, 4, 3)
    assert q["precision"] == pytest.approx(2 / 5) and q["recall"] == pytest.approx(2 / 4)
    assert q["instances_per_image"] == pytest.approx(5 / 3) and q["gt_per_image"] == pytest.approx(4 / 3)
    assert q["match_iou"] == 0.5
    assert 0 < q["mask_AP50"] <= 100 and q["mask_AP"] <= q["mask_AP50"]
    stricter = pseudo_label_quality(gt, results, iou_threshold=0.6)  # E's 0.5 no longer counts
    assert stricter["matched"] == 1
    none = pseudo_label_quality(gt, [])
    assert none["precision"] is None and none["recall"] == 0.0 and none["mask_AP"] == 0.0


def test_report_has_a_row_per_labeling_pass(tmp_path, tiny_pool):
    gt, results = tiny_pool
    quality = pseudo_label_quality(gt, results)
    for name, q in (("finetune", quality), ("adapted", None)):
        (tmp_path / "pseudo" / name).mkdir(parents=True)
        summary = {"images_labeled": 3, "images_skipped": 0, "instances": 5, **({"quality": q} if q else {})}
        (tmp_path / "pseudo" / name / "summary.json").write_text(json.dumps(summary))
    lines = pseudo_label_section(str(tmp_path))
    rows = [line for line in lines if line.startswith("| finetune") or line.startswith("| adapted")]
    assert rows[0].startswith("| finetune teacher | 3 | 0 | 5 | 1.67 | 1.33 | 0.40 | 0.50 |")
    assert rows[1] == "| adapted teacher | 3 | 0 | 5 | - | - | - | - | - | - |"  # a pool without ground truth
    assert pseudo_label_section(str(tmp_path / "nothing")) == []
