import hashlib
import json
import subprocess
import sys

import numpy as np

from pathlib import Path

from sskd_ray.data.builtin import CLASS_NAMES, build_builtin_dataset
from sskd_ray.data.coco import decode_rle, load_coco, mask_to_bbox


def test_instance_counts_masks_and_boxes(builtin_dir):
    ds = load_coco(builtin_dir / "train.json", builtin_dir / "images")
    assert len(ds.images) == 24 and not ds.skipped
    assert ds.class_names == list(CLASS_NAMES)
    for image in ds.images:
        anns = ds.annotations[image["id"]]
        assert 1 <= len(anns) <= 6
        masks = np.stack([decode_rle(a["segmentation"]) for a in anns])
        assert masks.shape[1:] == (64, 64)
        assert (masks.sum(axis=(1, 2)) >= 40).all(), "every kept instance is visibly non-empty"
        assert masks.sum(axis=0).max() == 1, "visible masks are disjoint"
        for ann, mask in zip(anns, masks):
            assert ann["bbox"] == mask_to_bbox(mask)
            assert ann["area"] == int(mask.sum())
    counts = [len(ds.annotations[im["id"]]) for im in ds.images]
    assert np.mean(counts) >= 2.0


def test_split_file_and_val(builtin_dir):
    labeled = (builtin_dir / "splits" / "labeled_25.txt").read_text().split()
    assert len(labeled) == 6 and all(name.startswith("train/") for name in labeled)
    val = json.loads((builtin_dir / "val.json").read_text())
    assert len(val["images"]) == 8 and all(im["id"] > 1_000_000 for im in val["images"])


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_cli_is_byte_identical_for_one_seed(tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "sskd_ray.data.builtin", "--out", str(out), "--train", "6",
                        "--val", "2", "--size", "64"], check=True, capture_output=True)
        outs.append(_digest(out))
    assert outs[0] == outs[1]
    other = tmp_path / "c"
    subprocess.run([sys.executable, "-m", "sskd_ray.data.builtin", "--out", str(other), "--train", "6",
                    "--val", "2", "--size", "64", "--seed", "1"], check=True, capture_output=True)
    assert _digest(other) != outs[0]


def test_test_split_has_its_own_scenes_and_ids(tmp_path):
    """The test split: its own random stream (no scene equal to a val scene), its own id blocks, the
    held-out garments; val is byte-identical with or without it."""
    with_test = Path(build_builtin_dataset(tmp_path / "a", num_train=4, num_val=3, size=64, seed=0, num_test=3))
    without = Path(build_builtin_dataset(tmp_path / "b", num_train=4, num_val=3, size=64, seed=0))
    test = json.loads((with_test / "test.json").read_text())
    assert [im["id"] for im in test["images"]] == [2_000_001, 2_000_002, 2_000_003]
    assert all(a["id"] > 20_000_000 for a in test["annotations"]) and test["annotations"]
    assert not (without / "test.json").exists()
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    val_images = sorted((with_test / "images" / "val").iterdir())
    assert [digest(p) for p in val_images] == [digest(p) for p in sorted((without / "images" / "val").iterdir())]
    assert not {digest(p) for p in (with_test / "images" / "test").iterdir()} & {digest(p) for p in val_images}
