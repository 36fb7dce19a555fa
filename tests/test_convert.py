"""Dataset converters on fixtures the tests write themselves, with instances known by construction."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sskd_ray.data.coco import decode_rle

REPO = Path(__file__).resolve().parents[1]


def _cityscapes_fixture(root: Path) -> dict:
    """Two images: person instances (24000, 24001), a car (26000), a crowd/stuff region (< 1000),
    and an instance of a non-thing class (road 7 * 1000 + 0: not one of the eight) to be ignored."""
    expected = {}
    for city, stem, seed in (("aachen", "aachen_000000_000019", 0), ("bonn", "bonn_000001_000019", 1)):
        ids = np.full((32, 48), 7, dtype=np.int32)  # road, a stuff label id
        ids[2:10, 3:9] = 24000
        ids[12:20, 3:5] = 24001
        ids[20:30, 20:40] = 26000 + seed
        ids[0:2, 40:48] = 26  # car region without instance ids: crowd, ignored
        ids[25:30, 0:5] = 7000  # a label id x 1000 that is not a thing class
        (root / "gtFine" / "train" / city).mkdir(parents=True, exist_ok=True)
        (root / "leftImg8bit" / "train" / city).mkdir(parents=True, exist_ok=True)
        # 16-bit grayscale, as the real instanceIds files
        Image.fromarray(ids.astype(np.uint16)).save(root / "gtFine" / "train" / city / f"{stem}_gtFine_instanceIds.png")
        Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png")
        expected[f"train/{city}/{stem}_leftImg8bit.png"] = sorted([(24, 48), (24, 16), (26, 200)])
    return expected


def test_cityscapes_to_coco(tmp_path):
    expected = _cityscapes_fixture(tmp_path / "cs")
    out = tmp_path / "cs_train.json"
    subprocess.run([sys.executable, "jobs/convert_dataset.py", "cityscapes", "--root", str(tmp_path / "cs"),
                    "--split", "train", "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    coco = json.loads(out.read_text())
    assert {c["id"]: c["name"] for c in coco["categories"]} == {24: "person", 25: "rider", 26: "car", 27: "truck",
                                                               28: "bus", 31: "train", 32: "motorcycle", 33: "bicycle"}
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    assert set(names.values()) == set(expected)
    got = {}
    for ann in coco["annotations"]:
        mask = decode_rle(ann["segmentation"])
        assert mask.sum() == ann["area"] and ann["iscrowd"] == 0
        got.setdefault(names[ann["image_id"]], []).append((ann["category_id"], ann["area"]))
    assert {k: sorted(v) for k, v in got.items()} == expected
    person = next(a for a in coco["annotations"] if a["area"] == 48)
    assert person["bbox"] == [3.0, 2.0, 6.0, 8.0]
    assert (tmp_path / "splits" / "perc_10.txt").is_file()


def test_ade20k_to_coco(tmp_path):
    root = tmp_path / "ade"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations_instance" / "validation").mkdir(parents=True)
    ann = np.zeros((20, 30, 3), np.uint8)
    ann[0:5, 0:5] = (12, 1, 0)  # category 12, instance 1
    ann[10:20, 0:10] = (12, 2, 0)  # category 12, instance 2
    ann[0:4, 20:30] = (3, 3, 0)  # category 3, instance 3
    ann[15:20, 20:30] = (0, 4, 0)  # no category: ignored
    ann[5:8, 12:15] = (7, 0, 0)  # no instance id: ignored
    Image.fromarray(ann).save(root / "annotations_instance" / "validation" / "ADE_val_00000001.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / "validation" / "ADE_val_00000001.jpg")
    (root / "instanceInfo100_train.txt").write_text("Idx\tName\n3\tbed\n12\tperson, individual\n")
    out = tmp_path / "ade_val.json"
    subprocess.run([sys.executable, "jobs/convert_dataset.py", "ade20k", "--root", str(root), "--split", "validation",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    coco = json.loads(out.read_text())
    assert len(coco["categories"]) == 100
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert names[3] == "bed" and names[12] == "person" and names[50] == "class_50"
    assert coco["images"] == [{"id": 1, "file_name": "validation/ADE_val_00000001.jpg", "height": 20, "width": 30}]
    assert sorted((a["category_id"], a["area"]) for a in coco["annotations"]) == [(3, 40), (12, 25), (12, 100)]
