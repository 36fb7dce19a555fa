"""What to label: image listings from a folder, a glob, a COCO json, or a Parquet / CSV manifest
(each local or a URI), streamed one image at a time so a pool of millions never sits in memory.

Locations are kept as listed: a symbolic link (to a file or to a folder) inside a pool is an image
of the pool under the link's own path, whatever its target; a dangling link is listed too, and
labeling records it in errors.jsonl ("cannot read") instead of crashing (issue 22).
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import posixpath
from typing import Iterator

import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sskd_ray import storage
from sskd_ray.redaction import redact

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(spec: str) -> list[dict]:
    """-> [{"image_id", "file_name", "path"}] sorted by path (small pools: prediction, tests)."""
    images = sorted(iter_images(spec), key=lambda r: r["path"])
    if not images:
        raise FileNotFoundError(f"no images found for '{redact(spec)}' (a folder, glob, COCO json or Parquet/CSV list)")
    return images


def iter_images(spec: str) -> Iterator[dict]:
    """{"image_id", "file_name", "path"[, "size"]} per image of `spec`: a directory (recursive, links
    followed), a glob, a COCO json (ids and file names kept; files under the json's folder or its
    `images/`), or a Parquet / CSV manifest with a `path` column (optional `image_id`, `size`)."""
    if storage.is_dir(spec):
        root = storage.normalize(spec)
        walk = _walk_local(root) if not storage.is_uri(root) else _walk_uri(root)
        return (_numbered(q, root) for q in walk if _is_image(q))
    suffix = posixpath.splitext(spec)[1].lower()
    if suffix == ".json" and storage.is_file(spec):
        return _from_coco(spec)
    if suffix in (".parquet", ".csv") and storage.is_file(spec):
        return _from_table(spec, suffix)
    if not any(c in spec for c in "*?["):
        raise FileNotFoundError(f"no such folder or file: '{redact(spec)}' (a folder, glob, COCO json or "
                                f"Parquet/CSV manifest)")
    return (_numbered(q, None) for q in _glob(spec) if _is_image(q))


def _is_image(location: str) -> bool:
    return posixpath.splitext(location)[1].lower() in IMAGE_SUFFIXES


def _walk_local(root: str) -> Iterator[str]:
    """Files below `root`, one folder listed at a time, following links to folders under the link's
    path (a link back to one of its own ancestors is not followed, so a cycle ends); a link to a
    file is yielded under its own path, dangling or not."""
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        subfolders = []
        for entry in ordered:
            if not entry.is_dir():  # is_dir follows links
                yield entry.path
            elif not (entry.is_symlink() and _is_ancestor(os.path.realpath(entry.path), os.path.realpath(folder))):
                subfolders.append(entry.path)
        stack.extend(reversed(subfolders))


def _is_ancestor(candidate: str, folder: str) -> bool:
    return folder == candidate or folder.startswith(candidate.rstrip(os.sep) + os.sep)


def _walk_uri(root: str) -> Iterator[str]:
    """Objects below a URI prefix, one 'folder' (delimiter listing) at a time."""
    fs, base = storage.filesystem(root)
    stack = [base]
    while stack:
        folder = stack.pop()
        infos = sorted(fs.get_file_info(pafs.FileSelector(folder, recursive=False)), key=lambda i: i.path)
        for info in infos:
            if info.type == pafs.FileType.File:
                yield storage.join(root, info.path[len(base):].lstrip("/"))
        stack.extend(reversed([i.path for i in infos if i.type == pafs.FileType.Directory]))


def _from_coco(spec: str) -> Iterator[dict]:
    data = storage.read_json(spec)
    if "images" not in data:
        raise ValueError(f"{redact(spec)}: a COCO json needs an 'images' list")
    root = storage.join(storage.parent(spec), "images")
    root = root if storage.is_dir(root) else storage.parent(spec)
    for im in data["images"]:
        yield {"image_id": int(im["id"]), "file_name": im["file_name"], "path": storage.resolve(root, im["file_name"])}


def _from_table(spec: str, suffix: str) -> Iterator[dict]:
    """A user's manifest, a record batch at a time: `path` required, `image_id` and `size` optional."""
    fs, inner = storage.filesystem(spec)
    if suffix == ".parquet":
        with fs.open_input_file(inner) as handle:
            reader = pq.ParquetFile(handle)
            names = reader.schema_arrow.names
            _check_columns(spec, names)
            for batch in reader.iter_batches(batch_size=65_536, columns=[c for c in ("path", "image_id", "size")
                                                                          if c in names]):
                yield from _table_rows(batch.to_pylist())
    else:
        with fs.open_input_stream(inner) as stream:
            reader = pacsv.open_csv(stream)
            _check_columns(spec, reader.schema.names)
            for batch in reader:
                yield from _table_rows(batch.to_pylist())


def _check_columns(spec: str, names: list[str]) -> None:
    if "path" not in names:
        raise ValueError(f"{redact(spec)}: an image manifest needs a 'path' column (has {names})")


def _table_rows(rows: list[dict]) -> Iterator[dict]:
    for row in rows:
        path = storage.normalize(row["path"])
        image = _numbered(path, None)
        if row.get("image_id") is not None:
            image["image_id"] = int(row["image_id"])
        if row.get("size") is not None:
            image["size"] = int(row["size"])
        yield image


def _glob(pattern: str) -> Iterator[str]:
    """Local globs through `glob` (links kept); a URI glob lists the folder above its first wildcard."""
    if not storage.is_uri(pattern):
        for q in glob.iglob(pattern, recursive=True):
            if os.path.isfile(q) or os.path.islink(q):
                yield storage.normalize(q)
        return
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    base = "/".join(parts[:fixed])
    yield from (q for q in _walk_uri(base) if fnmatch.fnmatch(q, pattern.replace("**/", "*")))


def _numbered(location: str, root: str | None) -> dict:
    """Stable ids from the path itself (not the position), so adding files does not renumber others."""
    name = storage.relative_to(location, root) if root else storage.name(location)
    digest = int(hashlib.sha1(location.encode()).hexdigest()[:15], 16)
    return {"image_id": digest, "file_name": name, "path": location}
