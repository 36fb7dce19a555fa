"""What to label: image listings from a folder, a glob, a COCO json or a Parquet list (each local
or a URI), cut into deterministic shards whose names derive from their contents, so a re-run finds
the same shards."""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import posixpath
from pathlib import Path

from sskd_ray import storage

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(spec: str) -> list[dict]:
    """-> [{"image_id", "file_name", "path"}] sorted by path. `spec`: a directory (recursive), a glob,
    a COCO json (ids and file names kept; files under the json's folder or its `images/`), or a
    Parquet file with a `path` column (and optional `image_id`)."""
    if storage.is_dir(spec):
        root = storage.normalize(spec)
        return _numbered(_images_in(storage.list_files(root, recursive=True)), root)
    suffix = posixpath.splitext(spec)[1].lower()
    if suffix == ".json" and storage.is_file(spec):
        data = storage.read_json(spec)
        if "images" not in data:
            raise ValueError(f"{spec}: a COCO json needs an 'images' list")
        root = storage.join(storage.parent(spec), "images")
        root = root if storage.is_dir(root) else storage.parent(spec)
        return sorted(({"image_id": int(im["id"]), "file_name": im["file_name"],
                        "path": storage.resolve(root, im["file_name"])} for im in data["images"]),
                      key=lambda r: r["path"])
    if suffix == ".parquet" and storage.is_file(spec):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(storage.read_bytes(spec))).to_pylist()
        if not table or "path" not in table[0]:
            raise ValueError(f"{spec}: a Parquet image list needs a 'path' column")
        if "image_id" in table[0]:
            return sorted(({"image_id": int(r["image_id"]), "file_name": storage.name(r["path"]),
                            "path": storage.normalize(r["path"])} for r in table), key=lambda r: r["path"])
        return _numbered(sorted(storage.normalize(r["path"]) for r in table), None)
    paths = _images_in(_glob(spec))
    if not paths:
        raise FileNotFoundError(f"no images found for '{spec}' (a folder, glob, COCO json or Parquet list)")
    return _numbered(paths, None)


def _images_in(locations: list[str]) -> list[str]:
    return sorted(q for q in locations if posixpath.splitext(q)[1].lower() in IMAGE_SUFFIXES)


def _glob(pattern: str) -> list[str]:
    """Local globs through `glob`; a URI glob lists the folder above its first wildcard and matches."""
    if not storage.is_uri(pattern):
        return [storage.normalize(q) for q in glob.glob(pattern, recursive=True) if Path(q).is_file()]
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    base = "/".join(parts[:fixed])
    if fixed == len(parts):
        return [storage.normalize(pattern)] if storage.is_file(pattern) else []
    return [q for q in storage.list_files(base, recursive=True) if fnmatch.fnmatch(q, pattern.replace("**/", "*"))]


def _numbered(paths: list[str], root: str | None) -> list[dict]:
    """Stable ids from the path itself (not the position), so adding files does not renumber others."""
    out = []
    for q in paths:
        name = storage.relative_to(q, root) if root else storage.name(q)
        digest = int(hashlib.sha1(q.encode()).hexdigest()[:15], 16)
        out.append({"image_id": digest, "file_name": name, "path": q})
    return out


def plan_shards(images: list[dict], per_shard: int) -> list[dict]:
    """[{"shard": "shard-00003-<hash>", "images": [...]}]: index + hash of the member paths."""
    shards = []
    for i in range(0, len(images), per_shard):
        members = images[i:i + per_shard]
        digest = hashlib.sha1("\n".join(m["path"] for m in members).encode()).hexdigest()[:10]
        shards.append({"shard": f"shard-{i // per_shard:05d}-{digest}", "images": members})
    return shards
