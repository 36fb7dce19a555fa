"""The pool as a manifest, and the shards still to label, both in bounded memory (issues 20, 22).

A manifest is a Parquet file with one row per image: `path` (the image's location, the store's
key), `image_id` (int64), `file_name` and optional `size` (bytes). `write_manifest` streams a
listing (folder, glob, COCO json, or a user's Parquet / CSV manifest) into one, a batch at a time.
`plan_pending` reads it back a record batch at a time and yields shards of the images whose key is
not in the store yet; the only thing held whole is the set of keys (the store's, read with column
projection, plus the pending ones seen so far, which also drops duplicates in the manifest).

Shard names are `shard-<run>-<seq>-<hash of members>`: they depend on this run and its members
only, never on other images, so a grown pool or another `images_per_shard` never turns finished
work into "new" shards. What is finished is decided by the keys in the store, not by shard names.
"""
from __future__ import annotations

import hashlib
import io
import time
import uuid
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from sskd_ray import storage
from sskd_ray.data.pseudo_labels import stored_keys
from sskd_ray.label.sources import iter_images
from sskd_ray.redaction import redact

MANIFEST_SCHEMA = pa.schema([("path", pa.string()), ("image_id", pa.int64()), ("file_name", pa.string()),
                             ("size", pa.int64())])
BATCH_ROWS = 65_536


class EmptyPoolError(FileNotFoundError):
    """The images spec names no image: a clear error naming it, never a run that labels nothing."""


def manifest_location(out: str) -> str:
    """`out` itself when it names a .parquet file, else `out`/manifest.parquet."""
    out = storage.normalize(out)
    return out if out.endswith(".parquet") else storage.join(out, "manifest.parquet")


def write_manifest(spec: str | Iterable[dict], out: str) -> str:
    """List `spec` (an images spec, or image dicts) into the manifest at `out` (see manifest_location),
    in batches; returns its location. Raises EmptyPoolError naming `spec` when it holds no image."""
    target = manifest_location(out)
    images = iter_images(spec) if isinstance(spec, str) else iter(spec)
    buffer, count = io.BytesIO(), 0
    shown = redact(spec) if isinstance(spec, str) else "the given image list"
    metadata = {b"sskd.images": str(shown).encode()}
    with pq.ParquetWriter(buffer, MANIFEST_SCHEMA.with_metadata(metadata)) as writer:
        batch: list[dict] = []
        for image in images:
            batch.append({"path": image["path"], "image_id": int(image["image_id"]),
                          "file_name": image["file_name"], "size": image.get("size")})
            if len(batch) == BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=MANIFEST_SCHEMA))
                count, batch = count + len(batch), []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=MANIFEST_SCHEMA))
            count += len(batch)
    if count == 0:
        raise EmptyPoolError(f"no images in '{shown}': the pool is empty (a folder, glob, COCO json or "
                             f"Parquet/CSV manifest with at least one image is needed)")
    return storage.write_bytes(target, buffer.getvalue())


def iter_manifest(manifest: str) -> Iterator[list[dict]]:
    """The manifest's images, one record batch (a list of image dicts) at a time."""
    fs, inner = storage.filesystem(manifest)
    with fs.open_input_file(inner) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS):
            yield batch.to_pylist()


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}{uuid.uuid4().hex[:4]}"


def plan_pending(manifest: str, store: str, per_shard: int, run_id: str | None = None) -> Iterator[dict]:
    """Shards {"shard": name, "images": [{"image_id", "file_name", "path", "key", ...}]} of the manifest's
    images whose key is not in `store`, `per_shard` each (the last may be smaller), lazily."""
    if per_shard < 1:
        raise ValueError(f"label.images_per_shard must be >= 1, got {per_shard}")
    run_id = run_id or new_run_id()
    keys, legacy_ids, _ = stored_keys(store)
    members: list[dict] = []
    seq = 0
    for batch in iter_manifest(manifest):
        for image in batch:
            key = image["path"]
            if key in keys or image["image_id"] in legacy_ids:
                continue
            keys.add(key)  # a path listed twice is labeled once
            members.append({**image, "key": key})
            if len(members) == per_shard:
                yield _shard(run_id, seq, members)
                seq, members = seq + 1, []
    if members:
        yield _shard(run_id, seq, members)


def _shard(run_id: str, seq: int, members: list[dict]) -> dict:
    digest = hashlib.sha1("\n".join(m["key"] for m in members).encode()).hexdigest()[:10]
    return {"shard": f"shard-{run_id}-{seq:06d}-{digest}", "images": members}


def count_in_store(manifest: str, store: str) -> dict:
    """How the pool and the store relate, streaming the manifest: pool images, how many of them have
    a row, the store's rows, and what does not fit (duplicate rows, rows of images outside the pool)."""
    keys, legacy_ids, rows = stored_keys(store)
    pool = labeled = 0
    seen: set[str] = set()
    for batch in iter_manifest(manifest):
        for image in batch:
            if image["path"] in seen:
                continue
            seen.add(image["path"])
            pool += 1
            labeled += image["path"] in keys or image["image_id"] in legacy_ids
    unique = len(keys) + len(legacy_ids)
    return {"pool": pool, "labeled": labeled, "rows": rows, "duplicate_rows": rows - unique,
            "rows_outside_pool": unique - labeled}
