import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sskd_ray.data.coco import encode_rle
from sskd_ray.data.pseudo_labels import (SCHEMA, export_coco_results, read_store, row_targets,
                                         write_shard)
from sskd_ray.data.views import make_views
from sskd_ray.losses.correspondence import strong_to_weak


@pytest.mark.parametrize("seed", range(6))
def test_strong_view_maps_back_to_the_same_scene_location(seed):
    size = 32
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    image = torch.stack([xs, ys, torch.full_like(xs, 0.5)])  # colour encodes the scene position
    pair = make_views(image, size, torch.Generator().manual_seed(seed), photometric=False)
    aligned, valid = strong_to_weak(pair.strong[None], pair.crop_box[None], pair.strong_flipped[None], (size, size))
    weak = F.normalize(pair.weak[None], dim=1)
    assert valid.float().mean() > 0.1
    error = (aligned - weak).abs().amax(1)[valid]  # (valid pixels,)
    assert error.median() < 0.03 and error.max() < 0.15  # bilinear resampling twice, coarse grid
    pair2 = make_views(image, size, torch.Generator().manual_seed(seed))
    assert torch.equal(pair.crop_box, pair2.crop_box) and pair2.strong.min() >= 0 and pair2.strong.max() <= 1


def _row(image_id, teacher="t@abc"):
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:5] = True
    return {"image_id": image_id, "file_name": f"{image_id}.png", "height": 6, "width": 8, "teacher": teacher,
            "instances": [{"category_id": 3, "score": 0.9, "bbox": [2.0, 1.0, 3.0, 3.0],
                           "segmentation": encode_rle(mask)["counts"]},
                          {"category_id": 5, "score": 0.2, "bbox": [0.0, 0.0, 1.0, 1.0],
                           "segmentation": encode_rle(np.eye(6, 8, dtype=bool))["counts"]}]}


def test_store_round_trip_and_export(tmp_path):
    write_shard(tmp_path / "shard-00000.parquet", [_row(1), _row(2)])
    write_shard(tmp_path / "shard-00001.parquet", [{**_row(3), "instances": []}])
    assert not list(tmp_path.glob(".*tmp*"))
    table = read_store(tmp_path)
    assert table.schema.equals(SCHEMA) and table.column("image_id").to_pylist() == [1, 2, 3]
    assert set(table.column("teacher").to_pylist()) == {"t@abc"}
    masks, labels = row_targets(table.to_pylist()[0], category_ids=[1, 3, 5], score_threshold=0.3)
    assert masks.shape == (1, 6, 8) and masks.sum() == 9 and labels.tolist() == [1]
    results = json.loads(Path(export_coco_results(tmp_path, tmp_path / "results.json")).read_text())
    assert len(results) == 4 and results[0]["segmentation"]["size"] == [6, 8]
    assert read_store(tmp_path / "empty").num_rows == 0


def test_strong_view_blur_keeps_the_borders_bright():
    """A flat image stays flat under the blur (reflect padding); zero padding darkened the borders."""
    from sskd_ray.data.views import _blur

    flat = torch.full((3, 20, 30), 0.8)
    blurred = _blur(flat, 2.0)
    assert blurred.shape == flat.shape
    torch.testing.assert_close(blurred, flat)
