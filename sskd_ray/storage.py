"""Where files live: a local path or a URI (s3://bucket/key, gs://bucket/key, file:///abs), one API.

Every location the pipeline reads or writes (images, COCO jsons, the pseudo-label store, stage
folders, checkpoints, the run directory) goes through these functions, so a run directory on S3
works like a local one. URIs are served by pyarrow's filesystems (`FileSystem.from_uri`), which
take their credentials from the usual places (AWS_* variables or an instance role for S3, Google
application-default credentials for GCS); AWS_ENDPOINT_URL points S3 at MinIO or another
S3-compatible server. Locations are plain strings: local ones are made absolute, URIs kept as is.

Writes are whole-file: a local file is written to a temporary name and renamed; an object store
shows a new object only once its upload completed. So a file that exists is complete, which is
what the DONE markers and the pseudo-label shard manifest rely on.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs

from sskd_ray.redaction import redact


def is_uri(location: str | os.PathLike) -> bool:
    """True for scheme://... locations other than file:// (those are local paths)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def normalize(location: str | os.PathLike) -> str:
    """A canonical string: URIs without a trailing slash, local paths absolute (file:// dropped).
    Symbolic links are kept, not resolved: a pool of links is labeled under the links' own paths,
    which stay inside the pool even when their targets live elsewhere (issue 22)."""
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if is_uri(text):
        scheme, rest = text.split("://", 1)
        return f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else f"{scheme}://{rest}"
    return os.path.abspath(os.path.expanduser(text))


def join(location: str | os.PathLike, *parts: str) -> str:
    text = normalize(location)
    if is_uri(text):
        return posixpath.join(text, *(str(p).strip("/") for p in parts))
    return str(Path(text).joinpath(*parts))


def resolve(base: str | os.PathLike, file_name: str) -> str:
    """`file_name` as a location: kept when it is a URI or an absolute path, else joined to `base`
    (how COCO `file_name`s relate to their image folder)."""
    if is_uri(file_name) or file_name.startswith("file://") or os.path.isabs(file_name):
        return normalize(file_name)
    return join(base, file_name)


def name(location: str | os.PathLike) -> str:
    return posixpath.basename(normalize(location).rstrip("/"))


def parent(location: str | os.PathLike) -> str:
    text = normalize(location)
    if is_uri(text):
        scheme, rest = text.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return str(Path(text).parent)


def relative_to(location: str | os.PathLike, base: str | os.PathLike) -> str:
    """`location` below `base`, as a posix relative path (for links in reports)."""
    text, root = normalize(location), normalize(base).rstrip("/") + "/"
    if not text.startswith(root):
        raise ValueError(f"{redact(text)} is not under {redact(str(base))}")
    return text[len(root):].replace(os.sep, "/")


@functools.lru_cache(maxsize=32)
def _uri_filesystem(scheme_and_bucket: str) -> pafs.FileSystem:
    fs, _ = pafs.FileSystem.from_uri(scheme_and_bucket)
    return fs


def filesystem(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """-> (pyarrow filesystem, path inside it); one filesystem object per scheme + bucket."""
    text = normalize(location)
    if not is_uri(text):
        return pafs.LocalFileSystem(), text
    scheme, rest = text.split("://", 1)
    bucket = rest.split("/", 1)[0]
    try:
        fs = _uri_filesystem(f"{scheme}://{bucket}")
    except Exception as err:  # unknown scheme, missing credentials, bad bucket name ...
        raise OSError(f"cannot open storage for {redact(text)}: {redact(str(err))}") from err
    return fs, rest


def _info(location: str | os.PathLike) -> pafs.FileInfo:
    fs, path = filesystem(location)
    return fs.get_file_info(path)


def exists(location: str | os.PathLike) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str | os.PathLike) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location: str | os.PathLike) -> bool:
    return _info(location).type == pafs.FileType.Directory


# A read-through cache for reads from object storage (sskd_ray.data.image_cache installs one);
# None, the default, reads every location directly.
_read_cache: Any = None


def set_read_cache(cache: Any) -> None:
    """Install `cache` (with `accepts(location) -> bool` and `read(location) -> bytes`) for this
    process's `read_bytes`, or None to read directly again."""
    global _read_cache
    _read_cache = cache


def get_read_cache() -> Any:
    return _read_cache


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole file; through the installed read cache when it accepts the location."""
    if _read_cache is not None and _read_cache.accepts(str(location)):
        return _read_cache.read(str(location))
    return fetch_bytes(location)


def fetch_bytes(location: str | os.PathLike) -> bytes:
    """The whole file, always from its storage (no cache)."""
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {redact(normalize(location))}") from None
    except OSError as err:
        if not exists(location):
            raise FileNotFoundError(f"no such file: {redact(normalize(location))}") from None
        raise OSError(f"cannot read {redact(normalize(location))}: {redact(str(err))}") from err


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def read_json(location: str | os.PathLike) -> Any:
    return json.loads(read_bytes(location))


def write_bytes(location: str | os.PathLike, data: bytes) -> str:
    """Write a whole file; readers never see part of it (see the module doc)."""
    fs, path = filesystem(location)
    if is_uri(location):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return normalize(location)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return str(target)


def write_text(location: str | os.PathLike, text: str) -> str:
    return write_bytes(location, text.encode("utf-8"))


def write_json(location: str | os.PathLike, value: Any, indent: int | None = 2) -> str:
    return write_text(location, json.dumps(value, indent=indent))


def list_files(location: str | os.PathLike, pattern: str = "*", recursive: bool = False) -> list[str]:
    """Files under a folder whose name matches `pattern` (fnmatch), sorted; [] for a missing folder."""
    fs, path = filesystem(location)
    base = normalize(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    found = []
    for info in infos:
        if info.type == pafs.FileType.File and fnmatch.fnmatch(info.base_name, pattern):
            found.append(join(base, info.path[len(path):].lstrip("/")))
    return sorted(found)


def remove(location: str | os.PathLike) -> None:
    """Delete a file or a whole folder; nothing happens when it is not there."""
    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def copy_tree(source: str | os.PathLike, destination: str | os.PathLike) -> str:
    """Copy a file or folder between any two locations (local <-> URI included)."""
    src_fs, src = filesystem(source)
    dst_fs, dst = filesystem(destination)
    if src_fs.get_file_info(src).type == pafs.FileType.File:
        write_bytes(destination, read_bytes(source))
    else:
        dst_fs.create_dir(dst, recursive=True)
        pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
    return normalize(destination)


@contextlib.contextmanager
def local_copy(location: str | os.PathLike) -> Iterator[Path]:
    """A local path holding `location` (file or folder): itself when local, else a temporary download.
    For libraries that only take local files (MLflow artifacts, torch.jit.load, ...)."""
    if not is_uri(location):
        yield Path(normalize(location))
        return
    with tempfile.TemporaryDirectory(prefix="sskd-") as tmp:
        target = Path(tmp) / name(location)
        copy_tree(location, target)
        yield target


@contextlib.contextmanager
def local_output(location: str | os.PathLike) -> Iterator[Path]:
    """A local path to write `location` to (file or folder): itself when local, else a temporary one
    uploaded when the block ends without an error. For writers that need a local path (matplotlib,
    torch.jit.save, the ONNX exporter)."""
    if not is_uri(location):
        target = Path(normalize(location))
        target.parent.mkdir(parents=True, exist_ok=True)
        yield target
        return
    with tempfile.TemporaryDirectory(prefix="sskd-") as tmp:
        target = Path(tmp) / name(location)
        yield target
        if target.exists():
            copy_tree(target, location)

