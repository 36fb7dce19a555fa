"""A read-through local disk cache for images in object storage (s3://, gs://), so that training does
not download the pool again every epoch.

One file per image, named by the SHA-256 of its normalised URI, in one folder that several
processes on a node share. A file appears whole (written to a temporary name, then `os.replace`),
so a reader sees either nothing or the complete image; a file another process evicted while we
looked for it is a miss, never an error. Recency is the file's mtime (touched on every hit), and
eviction removes the least recently used files until the folder is under 90 % of its bound (the
slack keeps folder scans rare). The bound is checked on every insert against this process's
running total, refreshed by a folder scan whenever it would pass the bound, so several processes
together overshoot by at most what the others inserted since this one's last scan.

Images only (by extension): JSON files, checkpoints and shards may change under the same URI and
are never cached. Local paths are never cached. `enable_image_cache` installs the cache as
`sskd_ray.storage`'s read hook for this process; `hits` / `fetches` count what it did.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

from sskd_ray import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_DIR_NAME = "sskd-image-cache"


class ImageCache:
    """Read-through cache of object-store images under `folder`, at most `max_bytes` on disk."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"image cache bound must be > 0 bytes, got {max_bytes}")
        self.folder = Path(folder).expanduser().resolve()  # made on the first insert
        self.max_bytes = int(max_bytes)
        self.hits = 0  # reads served from disk
        self.fetches = 0  # reads that went to object storage (one GET each)
        self.evicted = 0
        self._total: int | None = None  # this process's view of the folder's size; None: scan first

    def accepts(self, location: str) -> bool:
        return storage.is_uri(location) and posixpath.splitext(str(location).lower())[1] in IMAGE_EXTENSIONS

    def path_for(self, location: str) -> Path:
        return self.folder / hashlib.sha256(storage.normalize(location).encode()).hexdigest()

    def read(self, location: str) -> bytes:
        """The bytes at `location`, from the cache when there, else fetched and inserted."""
        path = self.path_for(location)
        try:
            data = path.read_bytes()
            os.utime(path)  # most recently used
            self.hits += 1
            return data
        except FileNotFoundError:  # not cached, or evicted by another process just now
            pass
        data = storage.fetch_bytes(location)
        self.fetches += 1
        self._insert(path, data)
        return data

    def _insert(self, path: Path, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: served, not kept
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._total is None or self._total + len(data) > self.max_bytes:
            self._evict(self.max_bytes - len(data))
        storage.write_bytes(str(path), data)  # temp name + rename: readers never see half a file
        self._total += len(data)

    def _entries(self) -> list[tuple[int, int, Path]]:
        """(mtime ns, size, path) of every cached file (temporaries of other writers excluded)."""
        found = []
        if not self.folder.is_dir():
            return found
        with os.scandir(self.folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                found.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
        return found

    def _evict(self, room_for: int) -> None:
        """Scan the folder; drop least recently used files until the total fits in `room_for` (or
        90 % of the bound when that is less)."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        target = min(room_for, int(self.max_bytes * 0.9))
        for _, size, path in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            self.evicted += 1
        self._total = total

    def size_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())


def enable_image_cache(folder: str = "", max_gb: float = 20.0) -> ImageCache | None:
    """Route this process's object-store image reads through a cache (folder "" -> the temp dir's
    sskd-image-cache); `max_gb` <= 0 turns caching off. Returns the cache installed, or None."""
    if max_gb <= 0:
        storage.set_read_cache(None)
        return None
    folder = folder or os.path.join(os.environ.get("TMPDIR", "/tmp"), DEFAULT_DIR_NAME)
    current = storage.get_read_cache()
    if isinstance(current, ImageCache) and current.folder == Path(folder).expanduser().resolve() \
            and current.max_bytes == int(max_gb * 1e9):
        return current  # the same cache again (a restarted loop in the same worker process)
    cache = ImageCache(folder, int(max_gb * 1e9))
    storage.set_read_cache(cache)
    return cache
