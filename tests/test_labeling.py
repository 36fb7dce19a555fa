"""Ray Data pseudo-labeling on a local 2-CPU Ray with a tiny random-weight teacher."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import ray
from PIL import Image

from sskd_ray.config import LabelConfig, ModelConfig
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.pseudo_labels import read_store
from sskd_ray.label.pipeline import TeacherMismatchError, run_labeling
from sskd_ray.label.sources import list_images
from sskd_ray.models.build import tiny_model_config


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture
def mixed_folder(builtin_dir, tmp_path):
    folder = tmp_path / "pool"
    shutil.copytree(builtin_dir / "images" / "train", folder)
    rgb = np.asarray(Image.open(folder / "000000.png"))
    Image.fromarray(rgb[..., 0]).save(folder / "grey.png")
    Image.fromarray(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 200, np.uint8)], 2)).save(folder / "rgba.png")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(folder / "deep16.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return folder


def _spec():
    model = dataclasses.asdict(tiny_model_config(ModelConfig()))
    return {"model": model, "class_names": list(CLASS_NAMES), "category_ids": list(range(1, 11)), "checkpoint": ""}


def test_labels_every_valid_image_once_and_lists_the_corrupt_one(local_ray, mixed_folder, tmp_path):
    images = list_images(str(mixed_folder))
    assert len(images) == 24 + 4
    cfg = LabelConfig(images_per_shard=8, num_actors=2, batch_size=4, score_threshold=0.0)
    summary = run_labeling(images, tmp_path / "out", _spec(), "tiny@0", 64, cfg)
    table = read_store(tmp_path / "out")
    ids = table.column("image_id").to_pylist()
    valid = {im["image_id"] for im in images if not im["path"].endswith("corrupt.png")}
    assert len(ids) == len(set(ids)) and set(ids) == valid
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["path"].rsplit("/", 1)[-1] for e in errors] == ["corrupt.png"] and "cannot decode" in errors[0]["reason"]
    assert summary["images_labeled"] == 27 and summary["images_skipped"] == 1 and summary["shards_run"] == 4
    assert set(table.column("teacher").to_pylist()) == {"tiny@0"}

    # resume: drop one finished shard as if the job died before it; a re-run redoes only that one
    shards = sorted((tmp_path / "out").glob("shard-*.parquet"))
    shards[1].unlink()
    again = run_labeling(images, tmp_path / "out", _spec(), "tiny@0", 64, cfg)
    assert again["shards_run"] == 1
    rerun_ids = read_store(tmp_path / "out").column("image_id").to_pylist()
    assert sorted(rerun_ids) == sorted(ids)

    with pytest.raises(TeacherMismatchError, match="tiny@0"):
        run_labeling(images, tmp_path / "out", _spec(), "other@1", 64, cfg)


def test_gpu_request_without_gpus_fails_fast(local_ray, builtin_dir, tmp_path):
    images = list_images(str(builtin_dir / "val.json"))
    assert len(images) == 8 and images[0]["image_id"] > 1_000_000
    with pytest.raises(RuntimeError, match="GPU"):
        run_labeling(images, tmp_path / "o", _spec(), "t", 64, LabelConfig(num_gpus_per_actor=0.5))


def test_sources_glob_parquet_and_checkpoint_teacher(builtin_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from sskd_ray.config import Config
    from sskd_ray.label.predictor import build_teacher_from_spec
    from sskd_ray.label.run import resolve_teacher
    from sskd_ray.label.sources import plan_shards

    by_glob = list_images(str(builtin_dir / "images" / "val" / "*.png"))
    assert len(by_glob) == 8
    pq.write_table(pa.table({"path": [im["path"] for im in by_glob]}), tmp_path / "list.parquet")
    assert [im["image_id"] for im in list_images(str(tmp_path / "list.parquet"))] == [im["image_id"] for im in by_glob]
    shards = plan_shards(by_glob, 3)
    assert [len(s["images"]) for s in shards] == [3, 3, 2] and plan_shards(by_glob, 3) == shards
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(str(tmp_path / "nothing-*.png"))

    spec = _spec()
    model = build_teacher_from_spec(spec)
    ckpt = tmp_path / "adapted"
    ckpt.mkdir()
    torch.save(model.state_dict(), ckpt / "model.pt")
    (ckpt / "teacher.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "checkpoint"}))
    loaded_spec, teacher_id, size = resolve_teacher(Config(), str(ckpt), smoke=False)
    assert teacher_id.startswith("adapted:") and size == 64
    reloaded = build_teacher_from_spec(loaded_spec)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        resolve_teacher(Config(), str(tmp_path), smoke=False)
