"""sskd_ray.storage: one API for local paths and object-store URIs (here a real S3-protocol server)."""
import io

import numpy as np
import pytest
from PIL import Image

from sskd_ray import storage


def test_location_strings_by_hand(tmp_path):
    assert storage.is_uri("s3://b/k") and storage.is_uri("gs://b/k")
    assert not storage.is_uri("/data/x") and not storage.is_uri("file:///data/x")
    assert storage.normalize("s3://b/runs/x/") == "s3://b/runs/x"
    assert storage.normalize("file:///data/x") == "/data/x"
    assert storage.join("s3://b/runs", "x", "/y/", "z.json") == "s3://b/runs/x/y/z.json"
    assert storage.join(tmp_path, "a", "b.txt") == str(tmp_path / "a" / "b.txt")
    assert storage.parent("s3://b/runs/x/model.pt") == "s3://b/runs/x"
    assert storage.name("gs://b/runs/x/") == "x"
    assert storage.resolve("s3://b/images", "train/1.png") == "s3://b/images/train/1.png"
    assert storage.resolve("s3://b/images", "s3://other/1.png") == "s3://other/1.png"
    assert storage.resolve("s3://b/images", "/abs/1.png") == "/abs/1.png"
    assert storage.relative_to("s3://b/runs/x/student/final", "s3://b/runs/x") == "student/final"
    with pytest.raises(ValueError, match="not under"):
        storage.relative_to("s3://b/other", "s3://b/runs")
    fs, inner = storage.filesystem("gs://some-bucket/runs/x")  # GCS: pyarrow's own client, same code path
    assert type(fs).__name__ == "GcsFileSystem" and inner == "some-bucket/runs/x"


def test_local_round_trip_is_whole_file_and_lists_by_pattern(tmp_path):
    target = storage.join(tmp_path, "deep", "a.json")
    storage.write_json(target, {"x": 1})
    assert storage.read_json(target) == {"x": 1} and storage.is_file(target) and storage.is_dir(storage.parent(target))
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["a.json"]  # no temporary file left behind
    storage.write_bytes(storage.join(tmp_path, "deep", "shard-00001.parquet"), b"p")
    assert storage.list_files(storage.join(tmp_path, "deep"), "shard-*.parquet") == [
        str(tmp_path / "deep" / "shard-00001.parquet")]
    assert storage.list_files(storage.join(tmp_path, "missing")) == []
    storage.remove(storage.join(tmp_path, "deep"))
    assert not storage.exists(storage.join(tmp_path, "deep"))
    with pytest.raises(FileNotFoundError, match="no such file: .*nothing.json"):
        storage.read_bytes(storage.join(tmp_path, "nothing.json"))


def test_s3_read_write_list_copy(s3_env, tmp_path):
    root = "s3://sskd/unit"
    storage.write_text(storage.join(root, "a", "one.txt"), "hello")
    storage.write_bytes(storage.join(root, "a", "b", "two.bin"), b"\x00\x01")
    assert storage.read_text(f"{root}/a/one.txt") == "hello"
    assert storage.is_file(f"{root}/a/one.txt") and storage.is_dir(f"{root}/a") and not storage.exists(f"{root}/zz")
    assert storage.list_files(f"{root}/a") == [f"{root}/a/one.txt"]
    assert storage.list_files(f"{root}/a", recursive=True) == [f"{root}/a/b/two.bin", f"{root}/a/one.txt"]
    with pytest.raises(FileNotFoundError, match="s3://sskd/unit/missing.json"):
        storage.read_json(f"{root}/missing.json")
    # folder copies both ways, and the local-only writers' helpers
    storage.copy_tree(f"{root}/a", tmp_path / "down")
    assert (tmp_path / "down" / "b" / "two.bin").read_bytes() == b"\x00\x01"
    storage.copy_tree(tmp_path / "down", f"{root}/up")
    assert storage.read_text(f"{root}/up/one.txt") == "hello"
    with storage.local_output(f"{root}/plot.png") as local:
        Image.new("RGB", (4, 3)).save(local)
    assert Image.open(io.BytesIO(storage.read_bytes(f"{root}/plot.png"))).size == (4, 3)
    with storage.local_copy(f"{root}/a") as local:
        assert (local / "one.txt").read_text() == "hello"
    storage.remove(f"{root}/up")
    assert storage.list_files(f"{root}/up", recursive=True) == []


def test_pseudo_label_store_and_coco_on_s3(s3_env):
    from sskd_ray.data.coco import encode_rle, load_coco, write_coco
    from sskd_ray.data.pseudo_labels import export_coco_results, read_store, write_shard

    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:5] = True
    rle = encode_rle(mask)
    store = "s3://sskd/store"
    for i in (2, 1):
        write_shard(f"{store}/shard-0000{i}-x.parquet", [
            {"image_id": i, "file_name": f"{i}.png", "height": 6, "width": 8, "teacher": "t",
             "instances": [{"category_id": 1, "score": 0.9, "bbox": [2, 1, 3, 3], "segmentation": rle["counts"]}]}])
    table = read_store(store)
    assert table.column("image_id").to_pylist() == [1, 2]  # shards read in name order
    results = storage.read_json(export_coco_results(store, f"{store}/coco_results.json"))
    assert [r["image_id"] for r in results] == [1, 2] and results[0]["bbox"] == [2.0, 1.0, 3.0, 3.0]

    # a COCO json and its images in a bucket; one listed image is missing and gets skipped, named
    png = io.BytesIO()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(png, format="PNG")
    storage.write_bytes("s3://sskd/coco/images/a.png", png.getvalue())
    images = [{"id": 1, "file_name": "a.png", "height": 6, "width": 8},
              {"id": 2, "file_name": "gone.png", "height": 6, "width": 8}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "area": 9, "bbox": [2, 1, 3, 3],
             "iscrowd": 0}]
    write_coco("s3://sskd/coco/train.json", images, anns, [{"id": 1, "name": "thing"}])
    ds = load_coco("s3://sskd/coco/train.json", "s3://sskd/coco/images")
    assert [im["id"] for im in ds.images] == [1]
    assert ds.skipped == [{"image": "gone.png", "reason": "not found under s3://sskd/coco/images"}]
    assert ds.image_path(ds.images[0]) == "s3://sskd/coco/images/a.png"
    assert ds.instance_masks(ds.images[0])[0].sum() == 9


def test_object_store_run_dir_needs_a_tracking_server():
    from sskd_ray.config import ConfigError
    from sskd_ray.tracking import resolve_tracking_uri

    with pytest.raises(ConfigError, match="tracking.uri"):
        resolve_tracking_uri("", "s3://bucket/runs/x")
    assert resolve_tracking_uri("http://mlflow:5000", "s3://bucket/runs/x") == "http://mlflow:5000"


def test_unknown_scheme_names_the_location():
    with pytest.raises(OSError, match="nope://b/x"):
        storage.read_bytes("nope://b/x")


def test_image_listing_from_a_bucket(s3_env):
    from sskd_ray.label.sources import list_images

    for name in ("pool/a/1.png", "pool/a/2.jpg", "pool/b/3.png", "pool/notes.txt"):
        storage.write_bytes(f"s3://sskd/{name}", b"x")
    folder = list_images("s3://sskd/pool")
    assert [r["file_name"] for r in folder] == ["a/1.png", "a/2.jpg", "b/3.png"]
    assert folder[0]["path"] == "s3://sskd/pool/a/1.png"
    assert [r["path"] for r in list_images("s3://sskd/pool/a/*.png")] == ["s3://sskd/pool/a/1.png"]
    again = list_images("s3://sskd/pool/")
    assert [r["image_id"] for r in again] == [r["image_id"] for r in folder]  # ids derive from the location
    assert all(type(r["path"]) is str for r in folder)  # plain strings: they travel to Ray actors as they are


@pytest.mark.slow
@pytest.mark.long
def test_pipeline_with_its_run_directory_in_s3(s3_env, tmp_path):
    """The smoke pipeline's teacher stages (Ray Train checkpoints, pseudo-label store, stage folders,
    built-in data, splits) all in a bucket; nothing lands on local disk but the MLflow db asked for;
    a re-run reads the DONE markers from the bucket and trains nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run_dir, db = "s3://sskd/runs/smoke", tmp_path / "mlflow.db"
    env = {**os.environ, **s3_env, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, str(repo / "jobs" / "full_pipeline.py"), "--smoke", "--stage", "teacher_selftrain",
               "--run-dir", run_dir, f"tracking.uri=sqlite:///{db}"]
    first = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    files = storage.list_files(run_dir, recursive=True)
    for stage in ("teacher/finetune", "teacher/selftrain"):
        assert f"{run_dir}/{stage}/DONE" in files
        assert {f"{run_dir}/{stage}/final/{n}" for n in ("model.safetensors", "config.json", "metrics.json")} <= set(files)
        assert storage.read_json(f"{run_dir}/{stage}/metrics.json")["iterations"] == 4  # configs/smoke.yaml
    shards = storage.list_files(f"{run_dir}/pseudo/finetune", "shard-*.parquet")
    summary = storage.read_json(f"{run_dir}/pseudo/finetune/summary.json")
    assert len(shards) == summary["shards_run"] > 0 and summary["images_labeled"] == 18
    checkpoints = [f for f in files if f.startswith(f"{run_dir}/ray_train/") and f.endswith("/model.safetensors")]
    assert len(checkpoints) == 4  # two per stage (checkpoint_every 2 of 4 iterations), in the bucket
    assert os.listdir(cwd) == []  # no stray local run folder, mlruns/ or data

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("sskd-ray").experiment_id],
                              "tags.`sskd.stage` = 'teacher_selftrain'")
    assert len(runs) == 1 and "mask_AP" in runs[0].data.metrics
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"losses.png", "metrics.json"}

    again = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[teacher_selftrain] already done" in again.stdout and "[teacher_finetune] already done" in again.stdout
    assert storage.list_files(run_dir, recursive=True) == files  # nothing trained or labeled again
