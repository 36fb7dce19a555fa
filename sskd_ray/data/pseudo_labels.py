"""The pseudo-label store (DESIGN.md "Contracts"): Parquet, one row per image.

Columns: image_id int64, file_name string, height/width int32, instances list<struct<category_id
int32, score float32, bbox list<float32> (xywh), segmentation string (COCO RLE counts)>>, teacher
string (model id + checkpoint hash). Shards are written whole to a temporary name and renamed, so
a shard that exists is complete; a re-run skips the shards already there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
])


def write_shard(path: str | Path, rows: list[dict]) -> Path:
    """Rows with the SCHEMA's keys -> one Parquet file, written atomically (tmp + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def shard_paths(store: str | Path) -> list[Path]:
    return sorted(Path(store).glob("shard-*.parquet"))


def read_store(store: str | Path) -> pa.Table:
    paths = shard_paths(store)
    if not paths:
        return SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in paths)


def store_teachers(store: str | Path) -> set[str]:
    table = read_store(store)
    return set(table.column("teacher").to_pylist()) if table.num_rows else set()


def iter_rows(store: str | Path) -> Iterable[dict]:
    for path in shard_paths(store):
        yield from pq.read_table(path, schema=SCHEMA).to_pylist()


def row_targets(row: dict, category_ids: list[int], score_threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One stored row -> ([n, H, W] bool masks, [n] contiguous labels), decoding RLE on the fly."""
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    kept = [inst for inst in row["instances"] if inst["score"] >= score_threshold]
    size = [row["height"], row["width"]]
    masks = np.zeros((len(kept), *size), dtype=bool)
    for i, inst in enumerate(kept):
        masks[i] = decode_rle({"size": size, "counts": inst["segmentation"]})
    return masks, np.array([contiguous[inst["category_id"]] for inst in kept], dtype=np.int64)


def export_coco_results(store: str | Path, out: str | Path) -> Path:
    """The store as a COCO results json (list of {image_id, category_id, segmentation, bbox, score})."""
    results = []
    for row in iter_rows(store):
        size = [row["height"], row["width"]]
        for inst in row["instances"]:
            results.append({"image_id": row["image_id"], "category_id": inst["category_id"],
                            "segmentation": {"size": size, "counts": inst["segmentation"]},
                            "bbox": [round(float(v), 2) for v in inst["bbox"]], "score": round(float(inst["score"]), 6)})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results))
    return out
