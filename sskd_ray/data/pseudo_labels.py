"""The pseudo-label store: Parquet, one row per image; the contract labeling, training and export share.

Columns: image_id int64, file_name string, height/width int32, instances list<struct<category_id
int32, score float32, bbox list<float32> (xywh), segmentation string (COCO RLE counts)>>, teacher
string (model id + checkpoint hash), key string.

`key` identifies the image a row labels: its location as listed (an absolute local path or a URI,
symbolic links kept as the link's own path, never resolved). A labeling run labels the pool images
whose key is not in the store yet (`stored_keys`, which reads only that column). Stores written
before the column existed have no key (null when read): their rows are matched by `image_id`.

The store is a folder or a URI (sskd_ray.storage); a shard is written whole (a temporary name
renamed, or one object upload), so a shard that exists is complete.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from sskd_ray import storage
from sskd_ray.data.coco import decode_rle

INSTANCE_TYPE = pa.struct([
    ("category_id", pa.int32()),
    ("score", pa.float32()),
    ("bbox", pa.list_(pa.float32())),
    ("segmentation", pa.string()),
])
SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("file_name", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("instances", pa.list_(INSTANCE_TYPE)),
    ("teacher", pa.string()),
    ("key", pa.string()),
])


def write_shard(path: str | Path, rows: list[dict]) -> str:
    """Rows with the SCHEMA's keys -> one Parquet file, written whole (see the module doc)."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
    return storage.write_bytes(path, buffer.getvalue())


def shard_paths(store: str | Path) -> list[str]:
    return storage.list_files(store, "shard-*.parquet")


def _read_shard(path: str) -> pa.Table:
    fs, inner = storage.filesystem(path)
    return pq.read_table(inner, schema=SCHEMA, filesystem=fs)


def read_store(store: str | Path) -> pa.Table:
    paths = shard_paths(store)
    if not paths:
        return SCHEMA.empty_table()
    return pa.concat_tables(_read_shard(p) for p in paths)


def stored_keys(store: str | Path) -> tuple[set[str], set[int], int]:
    """-> (keys of the labeled images, image_ids of rows without a key (old stores), row count), read
    with column projection: only `key` and `image_id` leave the files, whatever the store's size."""
    paths = shard_paths(store)
    if not paths:
        return set(), set(), 0
    fs, _ = storage.filesystem(paths[0])
    dataset = pads.dataset([storage.filesystem(p)[1] for p in paths], schema=SCHEMA, format="parquet", filesystem=fs)
    keys: set[str] = set()
    legacy: set[int] = set()
    rows = 0
    for batch in dataset.to_batches(columns=["key", "image_id"]):
        rows += batch.num_rows
        column = batch.column(0)
        if column.null_count:
            legacy.update(batch.filter(column.is_null()).column(1).to_pylist())
            column = column.drop_null()
        keys.update(column.to_pylist())
    return keys, legacy, rows


def iter_rows(store: str | Path) -> Iterable[dict]:
    for path in shard_paths(store):
        yield from _read_shard(path).to_pylist()


def row_targets(row: dict, category_ids: list[int], score_threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One stored row -> ([n, H, W] bool masks, [n] contiguous labels), decoding RLE on the fly."""
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    kept = [inst for inst in row["instances"] if inst["score"] >= score_threshold]
    size = [row["height"], row["width"]]
    masks = np.zeros((len(kept), *size), dtype=bool)
    for i, inst in enumerate(kept):
        masks[i] = decode_rle({"size": size, "counts": inst["segmentation"]})
    return masks, np.array([contiguous[inst["category_id"]] for inst in kept], dtype=np.int64)


def export_coco_results(store: str | Path, out: str | Path) -> str:
    """The store as a COCO results json (list of {image_id, category_id, segmentation, bbox, score})."""
    results = []
    for row in iter_rows(store):
        size = [row["height"], row["width"]]
        for inst in row["instances"]:
            results.append({"image_id": row["image_id"], "category_id": inst["category_id"],
                            "segmentation": {"size": size, "counts": inst["segmentation"]},
                            "bbox": [round(float(v), 2) for v in inst["bbox"]], "score": round(float(inst["score"]), 6)})
    return storage.write_text(out, json.dumps(results))
