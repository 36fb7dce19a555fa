"""Lazy reads of one training worker's share of the pseudo-label store.

A worker never loads the whole store: it lists the shard files, keeps only its share of them
(files rank::world; row groups, then rows, rank::world when there are fewer files than workers),
reads those files' Parquet footers for row counts, and holds nothing per row. A sample's row
(image id, file name, size, instances) is fetched by reading the one row group that holds it, with
column projection, into a small LRU of row groups; its RLE masks are decoded only when the sample
is drawn (`row_targets`). Memory is O(files in the share + LRU), not O(rows); see
bench/scale.py for the measured numbers.

A store can hold two rows of one image (written before runs took the store's lease, or by hand):
the stage runner finds them once, on the driver (pseudo_labels.duplicate_rows), and each worker skips
them, so training reads each image at most once whatever the store holds.

`rows_read` / `row_groups_read` count what was read, so a test can check that a worker read only
the row groups it used (the brief of issue 20: "assert it through the reader, not by timing").
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sskd_ray import storage
from sskd_ray.data.pseudo_labels import DamagedStoreError, row_targets, shard_paths

ROW_COLUMNS = ["image_id", "file_name", "height", "width", "instances"]


@dataclass(frozen=True)
class Piece:
    """Rows start, start + step, ... of one row group of one shard file (`count` of them)."""
    path: str
    row_group: int
    start: int
    step: int
    count: int
    offset: int = 0  # rows of the file before this row group


def _row_group_sizes(paths: list[str]) -> list[list[int]]:
    """Rows per row group of each file, from the footers only (threads for object storage, where
    each footer is a GET)."""
    def sizes(path: str) -> list[int]:
        fs, inner = storage.filesystem(path)
        try:
            with fs.open_input_file(inner) as handle:
                meta = pq.ParquetFile(handle).metadata
        except Exception as err:  # noqa: BLE001 - a cut-short shard: name it and what repairs it
            raise DamagedStoreError(storage.parent(path), [(path, f"{type(err).__name__}: {err}")]) from None
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    if len(paths) <= 1 or not storage.is_uri(paths[0]):
        # local footers are quick to read; threads would only leave per-thread malloc arenas behind
        return [sizes(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        return list(pool.map(sizes, paths))


def plan_share(paths: list[str], rank: int, world: int) -> list[Piece]:
    """This rank's pieces of the store: disjoint across ranks, together every row once.

    Whole files rank::world when there are at least `world` files (the labeler writes many small
    shards); else row groups rank::world; else rows rank::world inside every row group."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")

    def groups_of(files: list[str]) -> list[tuple[str, int, int, int]]:
        """(path, row group, rows, rows before it in the file) of every non-empty row group."""
        out = []
        for path, sizes in zip(files, _row_group_sizes(files)):
            starts = np.cumsum([0, *sizes[:-1]])
            out += [(path, g, n, int(s)) for g, (n, s) in enumerate(zip(sizes, starts)) if n]
        return out

    if len(paths) >= world:
        return [Piece(p, g, 0, 1, n, s) for p, g, n, s in groups_of(paths[rank::world])]
    groups = groups_of(paths)
    if len(groups) >= world:
        return [Piece(p, g, 0, 1, n, s) for p, g, n, s in groups[rank::world]]
    return [Piece(p, g, rank, world, len(range(rank, n, world)), s) for p, g, n, s in groups if n > rank]


def _kept_rows(pieces: list[Piece], skip: dict[str, list[int]]) -> np.ndarray | None:
    """Indices (into the share) of the rows not in `skip` ({path: file row numbers}); None when none
    of the share's rows is skipped. Only a store holding duplicate rows pays for this array."""
    keep, base, dropped = [], 0, False
    for piece in pieces:
        rows = piece.offset + piece.start + piece.step * np.arange(piece.count)  # file row numbers
        mask = ~np.isin(rows, skip.get(piece.path, []))
        dropped |= not mask.all()
        keep.append(base + np.flatnonzero(mask))
        base += piece.count
    return np.concatenate(keep) if dropped else None


class StoreShare:
    """A worker's share of the store as a sequence of rows: `len()`, `row(i)` -> dict, `targets(i)`.

    Only the row group holding row i is read (columns `ROW_COLUMNS`), kept in an LRU of
    `cache_row_groups` entries."""

    def __init__(self, pieces: list[Piece], cache_row_groups: int = 8, skip: dict[str, list[int]] | None = None):
        self.pieces = pieces
        self._ends = np.cumsum([p.count for p in pieces], dtype=np.int64)  # (pieces,)
        self._kept = _kept_rows(pieces, skip) if skip else None  # (rows kept,) when the store has duplicates
        self._cache: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)
        self._files: OrderedDict[str, tuple] = OrderedDict()  # path -> (open handle, ParquetFile)
        self.rows_read = 0
        self.row_groups_read: list[tuple[str, int]] = []

    @classmethod
    def open(cls, store: str, rank: int = 0, world: int = 1, cache_row_groups: int = 8,
             skip: dict[str, list[int]] | None = None) -> "StoreShare":
        """`skip`: rows never to read, {shard: file row numbers} (pseudo_labels.duplicate_rows: a second
        row of an image, so that training reads each image at most once whatever the store holds)."""
        paths = shard_paths(store)
        if not paths:
            raise FileNotFoundError(f"pseudo-label store '{store}' holds no shards: run the labeling pass first")
        return cls(plan_share(paths, rank, world), cache_row_groups, skip)

    def __len__(self) -> int:
        if self._kept is not None:
            return len(self._kept)
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, index: int) -> tuple[Piece, int]:
        """-> (piece, row offset inside its row group)."""
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} is outside this share of {len(self)} rows")
        if self._kept is not None:
            index = int(self._kept[index])
        k = bisect.bisect_right(self._ends, index)
        before = int(self._ends[k - 1]) if k else 0
        piece = self.pieces[k]
        return piece, piece.start + (index - before) * piece.step

    def _file(self, path: str) -> pq.ParquetFile:
        # a few open files are kept: their footers are parsed once, not on every row-group read
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path][1]
        fs, inner = storage.filesystem(path)
        handle = fs.open_input_file(inner)
        self._files[path] = (handle, pq.ParquetFile(handle))
        if len(self._files) > self._cache_size:
            self._files.popitem(last=False)[1][0].close()
        return self._files[path][1]

    def _row_group(self, piece: Piece) -> pa.Table:
        key = (piece.path, piece.row_group)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            table = self._file(piece.path).read_row_group(piece.row_group, columns=ROW_COLUMNS)
        except Exception as err:  # noqa: BLE001 - name the shard, and what repairs the store
            raise DamagedStoreError(storage.parent(piece.path),
                                    [(piece.path, f"row group {piece.row_group}: {type(err).__name__}: {err}")]) from None
        self.rows_read += table.num_rows
        self.row_groups_read.append(key)
        self._cache[key] = table
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return table

    def row(self, index: int) -> dict:
        """One stored row as a dict with `ROW_COLUMNS` (instances as a list of dicts)."""
        piece, offset = self.locate(index)
        return self._row_group(piece).slice(offset, 1).to_pylist()[0]

    def targets(self, index: int, category_ids: list[int], score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """([n, H, W] bool masks, [n] contiguous labels) of row `index`, RLE decoded now."""
        return row_targets(self.row(index), category_ids, score_threshold)



class ShareSamples(Sequence):
    """A `StoreShare` seen as a sequence of samples: item i is `make(i, row)`, built when asked for
    (the training set's pool; nothing is held per row)."""

    def __init__(self, share: StoreShare, make: Callable[[int, dict], object]):
        self.share, self._make = share, make

    def __len__(self) -> int:
        return len(self.share)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._make(int(index), self.share.row(int(index)))
