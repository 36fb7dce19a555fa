"""What to label: image listings from a folder, a glob, a COCO json or a Parquet list, cut into
deterministic shards whose names derive from their contents, so a re-run finds the same shards."""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(spec: str) -> list[dict]:
    """-> [{"image_id", "file_name", "path"}] sorted by path. `spec`: a directory (recursive), a glob,
    a COCO json (ids and file names kept; files under the json's folder or its `images/`), or a
    Parquet file with a `path` column (and optional `image_id`)."""
    p = Path(spec)
    if p.is_dir():
        paths = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        return _numbered(paths, p)
    if p.suffix == ".json" and p.is_file():
        data = json.loads(p.read_text())
        if "images" not in data:
            raise ValueError(f"{p}: a COCO json needs an 'images' list")
        root = p.parent / "images" if (p.parent / "images").is_dir() else p.parent
        return sorted(({"image_id": int(im["id"]), "file_name": im["file_name"], "path": str(root / im["file_name"])}
                       for im in data["images"]), key=lambda r: r["path"])
    if p.suffix == ".parquet" and p.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(p).to_pylist()
        if not table or "path" not in table[0]:
            raise ValueError(f"{p}: a Parquet image list needs a 'path' column")
        if "image_id" in table[0]:
            return sorted(({"image_id": int(r["image_id"]), "file_name": Path(r["path"]).name, "path": r["path"]}
                           for r in table), key=lambda r: r["path"])
        return _numbered(sorted(Path(r["path"]) for r in table), None)
    paths = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images found for '{spec}' (a folder, glob, COCO json or Parquet list)")
    return _numbered(paths, None)


def _numbered(paths: list[Path], root: Path | None) -> list[dict]:
    """Stable ids from the path itself (not the position), so adding files does not renumber others."""
    out = []
    for q in paths:
        name = str(q.relative_to(root)) if root else q.name
        digest = int(hashlib.sha1(str(q.resolve()).encode()).hexdigest()[:15], 16)
        out.append({"image_id": digest, "file_name": name, "path": str(q)})
    return out


def plan_shards(images: list[dict], per_shard: int) -> list[dict]:
    """[{"shard": "shard-00003-<hash>", "images": [...]}]: index + hash of the member paths."""
    shards = []
    for i in range(0, len(images), per_shard):
        members = images[i:i + per_shard]
        digest = hashlib.sha1("\n".join(m["path"] for m in members).encode()).hexdigest()[:10]
        shards.append({"shard": f"shard-{i // per_shard:05d}-{digest}", "images": members})
    return shards
