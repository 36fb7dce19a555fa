"""Ray Data pseudo-labeling on a local 2-CPU Ray with a tiny random-weight teacher."""
import json
import shutil

import numpy as np
import pytest
import ray
from PIL import Image

from sskd_ray.config import LabelConfig, ModelConfig
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.pseudo_labels import read_store
from sskd_ray.data.resize import InferenceSizes
from sskd_ray.label import pipeline
from sskd_ray.label.pipeline import TeacherMismatchError, run_labeling
from sskd_ray.label.predictor import TeacherRef
from sskd_ray.label.sources import list_images
from sskd_ray.models.build import tiny_model_config
from sskd_ray.models.checkpoint import ModelCard


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


def _teacher(teacher_id: str) -> TeacherRef:
    """The tiny random-weight model, built in each actor (no folder)."""
    model = tiny_model_config(ModelConfig())
    card = ModelCard(model, list(CLASS_NAMES), list(range(1, 11)), InferenceSizes(64), role="teacher")
    return TeacherRef(card, teacher_id)


def test_labels_every_valid_image_once_and_lists_the_corrupt_one(local_ray, mixed_folder, tmp_path):
    images = list_images(str(mixed_folder))
    assert len(images) == 24 + 4
    cfg = LabelConfig(images_per_shard=8, num_actors=2, batch_size=4, score_threshold=0.0)
    summary = run_labeling(images, tmp_path / "out", _teacher("tiny@0"), cfg)
    table = read_store(tmp_path / "out")
    ids = table.column("image_id").to_pylist()
    valid = {im["image_id"] for im in images if not im["path"].endswith("corrupt.png")}
    assert len(ids) == len(set(ids)) and set(ids) == valid
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["path"].rsplit("/", 1)[-1] for e in errors] == ["corrupt.png"] and "cannot decode" in errors[0]["reason"]
    assert summary["images_labeled"] == 27 and summary["images_skipped"] == 1 and summary["shards_run"] == 4
    # a fresh actor process starts before the first shard: a positive part of the run's time, not all of it
    assert 0 < summary["run"]["actor_start_seconds"] < summary["run"]["seconds"]
    assert set(table.column("teacher").to_pylist()) == {"tiny@0"}
    assert sorted(table.column("key").to_pylist()) == sorted(im["path"] for im in images if im["image_id"] in valid)

    # resume: drop one finished shard as if the job died before it; a re-run labels only its 8 images
    # (and tries the corrupt one again, which is still not in the store)
    shards = sorted((tmp_path / "out").glob("shard-*.parquet"))
    shards[1].unlink()
    again = run_labeling(images, tmp_path / "out", _teacher("tiny@0"), cfg)
    assert again["run"]["images_pending"] == 9 and again["run"]["images_labeled"] == 8 and again["shards_run"] == 2
    rerun_ids = read_store(tmp_path / "out").column("image_id").to_pylist()
    assert sorted(rerun_ids) == sorted(ids)
    assert again["images_labeled"] == 27 and again["store_rows"] == 27 and len(again["runs"]) == 2

    with pytest.raises(TeacherMismatchError, match="tiny@0"):
        run_labeling(images, tmp_path / "out", _teacher("other@1"), cfg)


def test_gpu_request_without_gpus_fails_fast(local_ray, builtin_dir, tmp_path):
    images = list_images(str(builtin_dir / "val.json"))
    assert len(images) == 8 and images[0]["image_id"] > 1_000_000
    with pytest.raises(RuntimeError, match="GPU"):
        run_labeling(images, tmp_path / "o", _teacher("t"), LabelConfig(num_gpus_per_actor=0.5))


def test_sources_glob_parquet_and_checkpoint_teacher(builtin_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from sskd_ray.config import Config
    from sskd_ray.label.predictor import load_teacher
    from sskd_ray.label.run import resolve_teacher
    from sskd_ray.models.checkpoint import save_trained
    from sskd_ray.label.manifest import plan_pending, write_manifest

    by_glob = list_images(str(builtin_dir / "images" / "val" / "*.png"))
    assert len(by_glob) == 8
    pq.write_table(pa.table({"path": [im["path"] for im in by_glob]}), tmp_path / "list.parquet")
    assert [im["image_id"] for im in list_images(str(tmp_path / "list.parquet"))] == [im["image_id"] for im in by_glob]
    manifest = write_manifest(by_glob + by_glob[:2], tmp_path / "store")  # two paths listed twice
    shards = list(plan_pending(manifest, str(tmp_path / "store"), 3))
    assert [len(s["images"]) for s in shards] == [3, 3, 2]
    assert sorted(im["key"] for s in shards for im in s["images"]) == sorted(im["path"] for im in by_glob)
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(str(tmp_path / "nothing-*.png"))

    model = load_teacher(_teacher("t"))
    ckpt = tmp_path / "adapted"
    save_trained(ckpt, model, _teacher("t").card)
    teacher = resolve_teacher(Config(), str(ckpt), smoke=False)
    assert teacher.id.startswith("adapted:") and teacher.card.inference == InferenceSizes(64)
    reloaded = load_teacher(teacher)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_teacher(Config(), str(tmp_path), smoke=False)


def _pool(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)


def _keys(out):
    keys = read_store(out).column("key").to_pylist()
    assert len(keys) == len(set(keys)), "duplicate rows in the store"
    return set(keys)


def test_one_actor_pool_labels_every_window(local_ray, builtin_dir, tmp_path, monkeypatch):
    """Issue 20: a large pool is planned in windows of WINDOW_SHARDS shards, but the actors (a fresh
    process each, seconds to start) are started once per run, not once per window."""
    monkeypatch.setattr(pipeline, "WINDOW_SHARDS", 2)
    images = list_images(str(builtin_dir / "images" / "train"))[:21]
    cfg = LabelConfig(images_per_shard=5, num_actors=1, max_actors=1, batch_size=5, score_threshold=0.0)
    summary = run_labeling(images, tmp_path / "out", _teacher("tiny@0"), cfg)
    assert summary["shards_run"] == 5  # 3 windows: 2 + 2 + 1 shards
    assert summary["run"]["actor_processes"] == 1
    ids = read_store(tmp_path / "out").column("image_id").to_pylist()
    assert sorted(ids) == sorted(im["image_id"] for im in images)


@pytest.mark.slow
def test_grown_pool_and_other_shard_size_label_only_new_images(local_ray, tmp_path):
    """Issue 22 (1): 40 images, then 3 whose names sort among the old ones, then another shard size:
    each run labels exactly what is missing, no row twice, finished shards untouched."""
    pool, out = tmp_path / "pool", tmp_path / "out"
    _pool(pool, [f"img_{i:03d}.png" for i in range(0, 80, 2)])
    cfg = LabelConfig(images_per_shard=8, num_actors=2, batch_size=8, score_threshold=0.0)
    from sskd_ray.label.manifest import write_manifest

    first = run_labeling(write_manifest(str(pool), out), out, _teacher("tiny@0"), cfg)
    assert first["images_labeled"] == 40 and first["run"]["images_labeled"] == 40 and len(_keys(out)) == 40
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}

    _pool(pool, ["img_001.png", "img_041.png", "img_079.png"])
    second = run_labeling(write_manifest(str(pool), out), out, _teacher("tiny@0"), cfg)
    assert second["run"]["images_pending"] == 3 and second["run"]["images_labeled"] == 3 and second["shards_run"] == 1
    assert second["images_seen"] == 43 and second["images_labeled"] == 43 and second["store_rows"] == 43
    assert _keys(out) == {str(p) for p in pool.glob("*.png")}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet") if p.name in before} == before

    third = run_labeling(write_manifest(str(pool), out), out, _teacher("tiny@0"),
                         LabelConfig(images_per_shard=5, num_actors=2, score_threshold=0.0))
    assert third["run"]["images_pending"] == 0 and third["shards_run"] == 0 and third["store_rows"] == 43
    assert third["problems"] == [] and [r["images_labeled"] for r in third["runs"]] == [40, 3, 0]


def test_symlinked_pool_labels_links_under_their_own_paths(local_ray, tmp_path):
    """Issue 22 (2): links to files and to folders outside the pool are labeled as pool images under the
    link's path; a dangling link is one line in errors.jsonl, not a crash."""
    elsewhere, pool, out = tmp_path / "elsewhere", tmp_path / "pool", tmp_path / "out"
    _pool(elsewhere, ["a.png"])
    _pool(elsewhere / "folder", ["b.png", "c.jpg"])
    pool.mkdir()
    (pool / "img_a.png").symlink_to(elsewhere / "a.png")
    (pool / "linked").symlink_to(elsewhere / "folder", target_is_directory=True)
    (pool / "gone.png").symlink_to(tmp_path / "missing.png")
    from sskd_ray.label.manifest import write_manifest

    summary = run_labeling(write_manifest(str(pool), out), out, _teacher("t"),
                           LabelConfig(images_per_shard=2, num_actors=1, score_threshold=0.0))
    assert _keys(out) == {str(pool / "img_a.png"), str(pool / "linked" / "b.png"), str(pool / "linked" / "c.jpg")}
    assert sorted(read_store(out).column("file_name").to_pylist()) == ["img_a.png", "linked/b.png", "linked/c.jpg"]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["path"] for e in errors] == [str(pool / "gone.png")] and "cannot read" in errors[0]["reason"]
    assert summary["images_seen"] == 4 and summary["images_labeled"] == 3 and summary["images_skipped"] == 1


def test_old_store_without_key_column_keeps_working(tmp_path):
    """Rows written before the `key` column are matched by image_id: nothing is labeled twice."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sskd_ray.label.manifest import count_in_store, plan_pending, write_manifest

    pool, out = tmp_path / "pool", tmp_path / "out"
    _pool(pool, ["a.png", "b.png", "c.png"])
    manifest = write_manifest(str(pool), out)
    images = list_images(str(pool))
    old = [{"image_id": im["image_id"], "file_name": im["file_name"], "height": 40, "width": 48, "instances": [],
            "teacher": "t"} for im in images[:2]]
    pq.write_table(pa.Table.from_pylist(old), out / "shard-00000-0123456789.parquet")  # the old schema
    assert [im["file_name"] for s in plan_pending(manifest, str(out), 8) for im in s["images"]] == ["c.png"]
    assert read_store(out).column("key").null_count == 2
    counts = count_in_store(manifest, str(out))
    assert counts == {"pool": 3, "labeled": 2, "rows": 2, "duplicate_rows": 0, "rows_outside_pool": 0}


def test_store_with_duplicate_rows_is_reported(tmp_path):
    from sskd_ray.data.pseudo_labels import write_shard
    from sskd_ray.label.manifest import count_in_store, write_manifest
    from sskd_ray.label.pipeline import summarise

    pool, out = tmp_path / "pool", tmp_path / "out"
    _pool(pool, ["a.png", "b.png"])
    manifest = write_manifest(str(pool), out)
    row = {"image_id": 1, "file_name": "a.png", "height": 40, "width": 48, "instances": [], "teacher": "t",
           "key": str(pool / "a.png")}
    write_shard(out / "shard-x-000000-a.parquet", [row])
    write_shard(out / "shard-y-000000-b.parquet", [row, {**row, "key": str(tmp_path / "other.png")}])
    assert count_in_store(manifest, str(out)) == {"pool": 2, "labeled": 1, "rows": 3, "duplicate_rows": 1,
                                                  "rows_outside_pool": 1}
    summary = summarise(str(out), manifest, {"id": "r", "shards": [], "images_pending": 0, "seconds": 0.0})
    assert len(summary["problems"]) == 2 and "duplicate" in summary["problems"][0]
    assert json.loads((out / "summary.json").read_text())["problems"] == summary["problems"]


@pytest.mark.parametrize("kind", ["folder", "glob", "csv"])
def test_empty_pool_is_a_clear_error_naming_it(tmp_path, kind):
    """Issue 22 (5): nothing to label is an error naming the spec, never a run that labels nothing."""
    from sskd_ray.label.manifest import EmptyPoolError, write_manifest

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    (tmp_path / "list.csv").write_text("path,image_id\n")
    spec = {"folder": tmp_path / "empty", "glob": tmp_path / "empty" / "*.png", "csv": tmp_path / "list.csv"}[kind]
    with pytest.raises(EmptyPoolError, match=str(spec).replace("*", r"\*")):
        write_manifest(str(spec), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_csv_and_parquet_manifests(builtin_dir, tmp_path):
    """Issue 20: a user's manifest (path, optional image_id and size) is read a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sskd_ray.label.manifest import iter_manifest, plan_pending, write_manifest

    paths = [im["path"] for im in list_images(str(builtin_dir / "images" / "val"))]
    (tmp_path / "list.csv").write_text("path,image_id,size\n" + "".join(f"{p},{i + 7},{100 + i}\n"
                                                                        for i, p in enumerate(paths)))
    pq.write_table(pa.table({"path": paths}), tmp_path / "list.parquet")
    from_csv = [im for batch in iter_manifest(write_manifest(str(tmp_path / "list.csv"), tmp_path / "a")) for im in batch]
    assert [(im["path"], im["image_id"], im["size"]) for im in from_csv] == [(p, i + 7, 100 + i) for i, p in enumerate(paths)]
    plan = plan_pending(write_manifest(str(tmp_path / "list.parquet"), tmp_path / "b"), str(tmp_path / "b"), 5)
    assert not isinstance(plan, list)  # a generator: shards are made as they are consumed
    assert [len(s["images"]) for s in plan] == [5, 3]


def test_store_marker_has_its_own_name_and_old_markers_still_guard(tmp_path):
    """A store's teacher marker is teacher_id.json (a trained model's card is config.json); a store
    written when the marker was teacher.json still refuses another teacher."""
    pipeline.claim_output(str(tmp_path / "new"), "t@1")
    assert json.loads((tmp_path / "new" / "teacher_id.json").read_text()) == {"teacher": "t@1"}
    pipeline.claim_output(str(tmp_path / "new"), "t@1")  # the same teacher: fine
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "teacher.json").write_text(json.dumps({"teacher": "t@0"}))
    with pytest.raises(TeacherMismatchError, match="t@0"):
        pipeline.claim_output(str(tmp_path / "old"), "t@1")
    pipeline.claim_output(str(tmp_path / "old"), "t@0")
    assert not (tmp_path / "old" / "teacher_id.json").exists()
