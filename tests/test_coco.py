import json

import numpy as np
import pytest

from sskd_ray.data.coco import (DatasetError, decode_rle, encode_rle, load_coco, mask_to_bbox,
                                segmentation_to_mask)
from sskd_ray.data.splits import read_split_file, split_by_fraction


def test_rle_round_trip_and_polygon():
    mask = np.zeros((7, 9), dtype=bool)
    mask[2:5, 3:8] = True
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 9]
    assert (decode_rle(rle) == mask).all()
    assert mask_to_bbox(mask) == [3.0, 2.0, 5.0, 3.0]
    # a 4x4 square polygon covers a 4x4 block of pixels in pycocotools' rasterisation
    poly = segmentation_to_mask([[1, 1, 5, 1, 5, 5, 1, 5]], 8, 8)
    assert poly.sum() == 16 and poly[1:5, 1:5].all()
    # column-major runs of `mask`: 3 empty columns + 2, then (3 on, 4 off) x 5 columns, 2 + 1 column
    uncompressed = {"size": [7, 9], "counts": [3 * 7 + 2, 3, 4, 3, 4, 3, 4, 3, 4, 3, 2 + 7]}
    assert (decode_rle(uncompressed) == mask).all()


def _write(tmp_path, data, images=("a.png",)):
    for name in images:
        (tmp_path / name).write_bytes(b"png")
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _good():
    square = [[1, 1, 5, 1, 5, 5, 1, 5]]
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "segmentation": square}],
    }


def test_bad_annotations_are_skipped_and_named(tmp_path):
    data = _good()
    data["annotations"] += [
        {"id": 11, "image_id": 1, "category_id": 99, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 12, "image_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 13, "image_id": 1, "category_id": 3, "segmentation": [[1, 1]]},
        {"id": 14, "image_id": 7, "category_id": 3, "segmentation": [[1, 1, 5, 1, 5, 5]]},
    ]
    data["images"].append({"id": 2, "file_name": "missing.png", "height": 8, "width": 8})
    ds = load_coco(_write(tmp_path, data))
    assert [a["id"] for a in ds.annotations[1]] == [10]
    reasons = {s.get("annotation_id", s.get("image")): s["reason"] for s in ds.skipped}
    assert "unknown category_id 99" in reasons[11]
    assert "category_id" in reasons[12]
    assert "bad segmentation" in reasons[13]
    assert "unknown image_id 7" in reasons[14]
    assert "not found" in reasons["missing.png"]
    masks, labels = ds.instance_masks(ds.images[0])
    assert masks.shape == (1, 8, 8) and labels.tolist() == [0]


def test_malformed_files_fail_naming_the_entry(tmp_path):
    with pytest.raises(DatasetError, match="not valid JSON"):
        (tmp_path / "x.json").write_text("{")
        load_coco(tmp_path / "x.json")
    data = _good()
    del data["categories"]
    with pytest.raises(DatasetError, match="categories"):
        load_coco(_write(tmp_path, data))
    data = _good()
    del data["images"][0]["height"]
    with pytest.raises(DatasetError, match=r"images\[0\].*height"):
        load_coco(_write(tmp_path, data))


def test_split_by_fraction_is_seeded_and_disjoint():
    ids = list(range(100, 150))
    lab, unl = split_by_fraction(ids, 0.1, seed=0)
    assert len(lab) == 5 and len(unl) == 45 and not set(lab) & set(unl)
    assert split_by_fraction(ids, 0.1, seed=0) == (lab, unl)
    assert split_by_fraction(ids, 0.1, seed=1)[0] != lab


def test_guided_distillation_split_file(tmp_path):
    images = [{"id": i, "file_name": f"city/img_{i}_leftImg8bit.png"} for i in range(5)]
    path = tmp_path / "perc_10.txt"
    path.write_text("img_1_leftImg8bit.png\n/abs/city/img_3_leftImg8bit.png\n")
    assert read_split_file(path, images) == ([1, 3], [0, 2, 4])
    path.write_text("img_9_leftImg8bit.png\n")
    with pytest.raises(ValueError, match="img_9"):
        read_split_file(path, images)
