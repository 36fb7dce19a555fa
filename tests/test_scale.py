"""Large pools (issue 20): lazy per-worker reads of the pseudo-label store, validation split across
ranks (2 gloo processes), and the read-through image cache against a real S3-protocol server."""
from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from sskd_ray import storage
from sskd_ray.config import Config
from sskd_ray.data.builtin import CLASS_NAMES
from sskd_ray.data.coco import encode_rle, load_coco
from sskd_ray.data.image_cache import ImageCache, enable_image_cache
from sskd_ray.data.pseudo_labels import read_store, row_targets, write_shard
from sskd_ray.data.store_reader import StoreShare, plan_share
from sskd_ray.eval.distributed import evaluate_distributed, gather_predictions, in_image_order, shard_dataset
from sskd_ray.eval.model_eval import predict_coco
from sskd_ray.models.build import build_model, tiny_model_config
from sskd_ray.train.data import build_training_set, draw_batch

CATEGORIES = list(range(1, 11))  # the built-in dataset's category ids


def _store_row(image_id: int, file_name: str, h: int, w: int, rng: np.random.Generator) -> dict:
    """A row with 3 instances: box-shaped masks at random places, scores 0.2 / 0.5 / 0.9."""
    instances = []
    for score in (0.2, 0.5, 0.9):
        mask = np.zeros((h, w), dtype=bool)
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        mask[y:y + 8, x:x + 8] = True
        instances.append({"category_id": int(rng.choice(CATEGORIES)), "score": score,
                          "bbox": [float(x), float(y), 8.0, 8.0], "segmentation": encode_rle(mask)["counts"]})
    return {"image_id": image_id, "file_name": file_name, "height": h, "width": w, "instances": instances,
            "teacher": "t@0"}


def _write_store(folder: Path, names: list[str], per_shard: int, h: int = 64, w: int = 64) -> None:
    rng = np.random.default_rng(0)
    rows = [_store_row(1000 + i, n, h, w, rng) for i, n in enumerate(names)]
    for s in range(0, len(rows), per_shard):
        write_shard(folder / f"shard-{s // per_shard:05d}.parquet", rows[s:s + per_shard])


def test_share_reads_only_the_row_groups_it_uses(tmp_path):
    """6 shards of 4 rows, 2 workers: each worker owns 3 shards, reading one row reads one row group
    (4 rows, not 24), and its targets equal the eager whole-store path's."""
    _write_store(tmp_path, [f"im{i}.png" for i in range(24)], per_shard=4)
    shares = [StoreShare.open(str(tmp_path), rank, 2, cache_row_groups=2) for rank in (0, 1)]
    assert [len(s) for s in shares] == [12, 12]
    assert shares[0].rows_read == 0  # opening read footers only
    eager = {r["image_id"]: r for r in read_store(tmp_path).to_pylist()}
    row = shares[1].row(5)  # rank 1 owns shards 1, 3, 5: its row 5 is shard 3's second row
    assert row["file_name"] == "im13.png" and shares[1].rows_read == 4
    assert shares[1].row_groups_read == [(str(tmp_path / "shard-00003.parquet"), 0)]
    masks, labels = shares[1].targets(5, CATEGORIES, 0.3)  # same row group: from the LRU
    assert shares[1].rows_read == 4
    want_masks, want_labels = row_targets(eager[1013], CATEGORIES, 0.3)
    assert masks.shape == (2, 64, 64) and np.array_equal(masks, want_masks) and np.array_equal(labels, want_labels)
    ids = [{s.row(i)["image_id"] for i in range(len(s))} for s in shares]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == set(eager)


def test_share_splits_row_groups_then_rows_when_files_are_few(tmp_path):
    """One file, one row group of 5 rows, 2 workers: rows 0, 2, 4 and 1, 3."""
    _write_store(tmp_path, [f"im{i}.png" for i in range(5)], per_shard=5)
    pieces = [plan_share(storage.list_files(tmp_path, "shard-*.parquet"), rank, 2) for rank in (0, 1)]
    assert [(p[0].start, p[0].step, p[0].count) for p in pieces] == [(0, 2, 3), (1, 2, 2)]
    share = StoreShare(pieces[1])
    assert [share.row(i)["file_name"] for i in range(len(share))] == ["im1.png", "im3.png"]


def test_training_batches_read_only_what_they_draw(builtin_dir, tmp_path):
    """A training set over a 24-row store (12 shards of 2) draws a batch with one pool image: it
    reads that image's row group and at most one more (draw_batch's loop looks at the next
    candidate before it stops), and the batch is the same when drawn again by a fresh set."""
    train = json.loads((builtin_dir / "train.json").read_text())
    names = [im["file_name"] for im in train["images"]]
    _write_store(tmp_path / "store", names, per_shard=2)
    ts = build_training_set(str(builtin_dir / "train.json"), str(builtin_dir / "images"), 32,
                            str(tmp_path / "store"), str(builtin_dir / "images"), 0.3, rank=0, world_size=1)
    assert len(ts.pseudo) == 24 and ts.store.rows_read == 0
    a = draw_batch(ts, 3, seed=0, batch_size=2, rank=0, world_size=1, pseudo_share=0.5)
    assert a.labeled.tolist() == [True, False]
    assert ts.store.rows_read <= 4 and 1 <= len(ts.store.row_groups_read) <= 2
    fresh = build_training_set(str(builtin_dir / "train.json"), str(builtin_dir / "images"), 32,
                               str(tmp_path / "store"), str(builtin_dir / "images"), 0.3)
    b = draw_batch(fresh, 3, seed=0, batch_size=2, rank=0, world_size=1, pseudo_share=0.5)
    assert torch.equal(a.weak, b.weak) and torch.equal(a.targets[1]["masks"], b.targets[1]["masks"])


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(replace(tiny_model_config(Config().student), image_size=64), list(CLASS_NAMES)).eval()


def _eval_worker(rank: int, world: int, init_file: str, weights: str, builtin: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = _tiny_model()
        model.load_state_dict(torch.load(weights, weights_only=True))
        val_json, images = os.path.join(builtin, "val.json"), os.path.join(builtin, "images")
        metrics, mine = evaluate_distributed(model, val_json, images, 64, rank, world, batch_size=1)
        everything = gather_predictions(mine, world)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "mine": mine,
                                                             "gathered": everything}))
    finally:
        dist.destroy_process_group()


def test_distributed_evaluation_equals_single_rank(builtin_dir, tmp_path):
    """Two gloo processes each predict half of the val split; rank 0's metrics and the gathered
    predictions (in image order) equal one process predicting everything."""
    model = _tiny_model()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    mp.spawn(_eval_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "w.pt"), str(builtin_dir), str(tmp_path)),
             nprocs=2, join=True)
    single, predictions = evaluate_distributed(model, builtin_dir / "val.json", builtin_dir / "images", 64, batch_size=1)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    dataset = load_coco(builtin_dir / "val.json", builtin_dir / "images", check_files=False)
    assert len(dataset.images) == 8 and single["num_predictions"] > 0
    for r, part in enumerate(ranks):  # each rank predicted exactly its images r::2
        assert {p["image_id"] for p in part["mine"]} == {im["id"] for im in dataset.images[r::2]}
    assert ranks[1]["metrics"] is None
    assert ranks[0]["metrics"] == json.loads(json.dumps(single))
    gathered, want = in_image_order(ranks[0]["gathered"], dataset), json.loads(json.dumps(predictions))
    # the same instances in the same order; scores may differ in the 6th decimal (other thread counts)
    assert [{**p, "score": 0} for p in gathered] == [{**p, "score": 0} for p in want]
    assert np.allclose([p["score"] for p in gathered], [p["score"] for p in want], atol=1e-5)


def test_shard_dataset_keeps_its_images_annotations(builtin_dir):
    dataset = load_coco(builtin_dir / "val.json", builtin_dir / "images", check_files=False)
    part = shard_dataset(dataset, 1, 3)
    assert [im["id"] for im in part.images] == [im["id"] for im in dataset.images[1::3]]
    assert set(part.annotations) == {im["id"] for im in part.images}
    assert {p["image_id"] for p in predict_coco(_tiny_model(), part, 64)} == {im["id"] for im in part.images}
    with pytest.raises(ValueError, match="rank 3"):
        shard_dataset(dataset, 3, 3)


def _png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)  # noise: PNG cannot compress it, so sizes are predictable
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_cache_reads_through_and_keeps_its_bound(s3_env, tmp_path, monkeypatch):
    """Images on a real S3-protocol server: the second read of an image is a hit (no GET); a cache
    bounded at 2.5 images keeps at most that on disk, evicting the least recently used; local
    paths and JSON files are never cached."""
    blobs = [_png(i) for i in range(4)]
    uris = [storage.write_bytes(f"s3://sskd/scale-cache/im{i}.png", b) for i, b in enumerate(blobs)]
    storage.write_text("s3://sskd/scale-cache/meta.json", "{}")
    cache = ImageCache(tmp_path / "cache", int(len(blobs[0]) * 2.5))
    monkeypatch.setattr(storage, "_read_cache", cache)
    assert storage.read_bytes(uris[0]) == blobs[0] and (cache.fetches, cache.hits) == (1, 0)
    assert storage.read_bytes(uris[0]) == blobs[0] and (cache.fetches, cache.hits) == (1, 1)
    storage.read_bytes(uris[1])
    os.utime(cache.path_for(uris[1]), ns=(1, 1))  # make im1 the least recently used
    storage.read_bytes(uris[0])  # hit: im0 is recent
    storage.read_bytes(uris[2])  # 3 images > 2.5: im1 goes
    assert (cache.fetches, cache.hits, cache.evicted) == (3, 2, 1)
    assert cache.size_bytes() <= cache.max_bytes
    assert not cache.path_for(uris[1]).exists() and cache.path_for(uris[0]).exists()
    for uri, blob in zip(uris, blobs):  # every read still returns the right bytes
        assert storage.read_bytes(uri) == blob
        assert cache.size_bytes() <= cache.max_bytes
    assert storage.read_text("s3://sskd/scale-cache/meta.json") == "{}"
    local = tmp_path / "local.png"
    local.write_bytes(blobs[0])
    before = cache.fetches + cache.hits
    storage.read_bytes(local)
    assert cache.fetches + cache.hits == before and not cache.accepts("s3://sskd/scale-cache/meta.json")
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_enable_image_cache_installs_one_cache_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_read_cache", None)
    assert enable_image_cache(str(tmp_path / "c"), 0) is None and storage.get_read_cache() is None
    cache = enable_image_cache(str(tmp_path / "c"), 0.5)
    assert storage.get_read_cache() is cache and cache.max_bytes == 500_000_000
    assert enable_image_cache(str(tmp_path / "c"), 0.5) is cache  # a restarted loop keeps its counters
    assert not (tmp_path / "c").exists()  # nothing is made before the first insert


def test_share_of_a_store_on_s3(s3_env, tmp_path):
    """The store in object storage: footers and row groups are read through pyarrow's S3 client."""
    _write_store(tmp_path, [f"im{i}.png" for i in range(6)], per_shard=2)
    for path in sorted(tmp_path.glob("shard-*.parquet")):
        storage.write_bytes(f"s3://sskd/scale-store/{path.name}", path.read_bytes())
    share = StoreShare.open("s3://sskd/scale-store", rank=1, world=2)  # shards 1 of 0, 1, 2
    assert len(share) == 2 and share.row(1)["file_name"] == "im3.png" and share.rows_read == 2
    assert share.row_groups_read == [("s3://sskd/scale-store/shard-00001.parquet", 0)]
