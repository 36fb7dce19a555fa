"""The pseudo-label store (DESIGN.md "Contracts"): Parquet, one row per image.

Columns: image_id int64, file_name string, height/width int32, instances list<struct<category_id
int32, score float32, bbox list<float32> (xywh), segmentation string (COCO RLE counts)>>, teacher
string (model id + checkpoint hash), key string (issue 22).

`key` identifies the image a row labels: its location as listed (an absolute local path or a URI,
symbolic links kept as the link's own path, never resolved). A labeling run labels the pool images
whose key is not in the store yet (`stored_keys`, which reads only that column). Stores written
before the column existed have no key (null when read): their rows are matched by `image_id`.

The store is a folder or a URI (sskd_ray.storage); a shard is written whole (a temporary name
renamed, or one object upload), so a shard that exists is complete. A shard damaged later (cut short
by a full disk or a copy, overwritten, bit rot) is found by the readers here, which raise
`DamagedStoreError` naming the file and the command that repairs the store, never pyarrow's own error:
a labeling run sets such shards aside (`set_aside`, into `<store>/damaged/`) and labels their images
again.
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
from sskd_ray.redaction import redact

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


DAMAGED_DIR = "damaged"


class DamagedStoreError(RuntimeError):
    """Shards of a store that cannot be read; `damaged` lists (path, reason)."""

    def __init__(self, store: str, damaged: list[tuple[str, str]]):
        self.store, self.damaged = storage.normalize(store), damaged
        listed = "; ".join(f"{path}: {reason}" for path, reason in damaged)
        super().__init__(redact(
            f"pseudo-label store {self.store}: {len(damaged)} shard(s) cannot be read ({listed}). Run the labeling "
            f"again into this store: it sets them aside in {storage.join(self.store, DAMAGED_DIR)} and labels "
            f"their images again: {relabel_command(self.store)} (a pipeline's store: re-run the pipeline command "
            f"with the same --run-dir)"))


def relabel_command(store: str) -> str:
    """The command that labels the store's missing images again (the teacher recorded in teacher.json)."""
    marker = storage.join(store, "teacher.json")
    source = storage.read_json(marker).get("source", "") if storage.is_file(marker) else ""
    return (f"python jobs/pseudo_label.py --images {storage.join(store, 'manifest.parquet')} --reuse-manifest "
            f"{source or '--teacher <the teacher it was made with>'} --out {store}")


def shard_problem(path: str, columns: list[str] | None = None) -> str | None:
    """Why `path` cannot be read (its footer; and `columns`, when given), or None when it can."""
    try:
        fs, inner = storage.filesystem(path)
        with fs.open_input_file(inner) as handle:
            shard = pq.ParquetFile(handle)
            if columns:
                present = [c for c in columns if c in shard.schema_arrow.names]
                shard.read(columns=present)
    except FileNotFoundError:
        return None  # set aside or replaced meanwhile: nothing to repair here
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        return f"{type(err).__name__}: {err}"
    return None


def check_store(store: str | Path, columns: list[str] | None = None) -> None:
    """Raise DamagedStoreError when a shard's footer (or `columns`) cannot be read."""
    damaged = [(p, why) for p in shard_paths(store) if (why := shard_problem(p, columns))]
    if damaged:
        raise DamagedStoreError(str(store), damaged)


def set_aside(store: str | Path, damaged: list[tuple[str, str]]) -> list[dict]:
    """Move damaged shards into <store>/damaged/ (kept for inspection, no longer read); their images
    are then missing from the store, so the next plan labels them again. -> what was moved, and why."""
    moved = []
    for path, reason in damaged:
        target = storage.join(store, DAMAGED_DIR, storage.name(path))
        fs, inner = storage.filesystem(path)
        target_inner = storage.filesystem(target)[1]
        fs.create_dir(storage.filesystem(storage.parent(target))[1], recursive=True)
        fs.move(inner, target_inner)
        moved.append({"shard": path, "moved_to": target, "reason": reason})
    return moved


def _read_shard(path: str) -> pa.Table:
    fs, inner = storage.filesystem(path)
    try:
        return pq.read_table(inner, schema=SCHEMA, filesystem=fs)
    except Exception as err:  # noqa: BLE001 - a damaged shard is named, with the command that repairs it
        if why := shard_problem(path, ["instances"]):
            raise DamagedStoreError(storage.parent(path), [(path, why)]) from None
        raise OSError(f"cannot read {redact(path)}: {redact(str(err))}") from err


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
    keys: set[str] = set()
    legacy: set[int] = set()
    rows = 0
    try:
        dataset = pads.dataset([storage.filesystem(p)[1] for p in paths], schema=SCHEMA, format="parquet",
                               filesystem=fs)
        for batch in dataset.to_batches(columns=["key", "image_id"]):
            rows += batch.num_rows
            column = batch.column(0)
            if column.null_count:
                legacy.update(batch.filter(column.is_null()).column(1).to_pylist())
                column = column.drop_null()
            keys.update(column.to_pylist())
    except Exception as err:  # noqa: BLE001 - find which shard, then say so (never pyarrow's bare error)
        damaged = [(p, why) for p in paths if (why := shard_problem(p, ["key", "image_id"]))]
        if damaged:
            raise DamagedStoreError(str(store), damaged) from None
        raise OSError(f"cannot read the keys of pseudo-label store {redact(str(store))}: {redact(str(err))}") from err
    return keys, legacy, rows


def duplicate_rows(store: str | Path) -> dict[str, list[int]]:
    """Rows that label an image an earlier row already labels: {shard: [row numbers in the file]}, {} for a
    sound store. Shards in name order, rows in file order; the first row of a key is the one kept, so
    every reader that skips these reads each image once. Reads the `key` / `image_id` columns of each
    shard (a damaged one raises DamagedStoreError), so it doubles as the training stage's store check."""
    seen: set = set()
    skip: dict[str, list[int]] = {}
    damaged = []
    for path in shard_paths(store):
        fs, inner = storage.filesystem(path)
        try:
            table = pq.read_table(inner, columns=["key", "image_id"], schema=SCHEMA, filesystem=fs)
        except Exception as err:  # noqa: BLE001 - listed with the others, then raised as one error
            damaged.append((path, f"{type(err).__name__}: {err}"))
            continue
        ids = table.column("image_id").to_pylist()
        for row, key in enumerate(table.column("key").to_pylist()):
            ident = key if key is not None else ("image_id", ids[row])  # stores without the key column
            if ident in seen:
                skip.setdefault(path, []).append(row)
            seen.add(ident)
    if damaged:
        raise DamagedStoreError(str(store), damaged)
    return skip


def store_teachers(store: str | Path) -> set[str]:
    table = read_store(store)
    return set(table.column("teacher").to_pylist()) if table.num_rows else set()


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
