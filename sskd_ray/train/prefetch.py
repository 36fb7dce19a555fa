"""Batches made on a background thread, so the training step does not wait for JPEG decoding, the
scale jitter and the strong view's augmentations (at Cityscapes size these take longer than a step).

Each batch is still the pure function `draw_batch(ts, iteration, seed, ...)` of (seed, iteration,
rank): the thread only runs it ahead, in iteration order, into a bounded queue (`depth` batches), so
a worker resumed at iteration t sees exactly the batches it would have seen. Unreadable images are
recorded in `ts.skipped` by the thread; each batch travels with a copy of that record as it stood
after the batch was drawn (`skipped`), which is what a checkpoint saves (never a dict that another
thread is writing). Decoding (PIL) and torch's kernels release the GIL, so the thread overlaps the
step. The idea is PyTorch DataLoader's prefetching, without worker processes (the training set holds
an open Parquet store and a COCO index that need not be pickled).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable

from sskd_ray.train.data import Batch


class BatchPrefetcher:
    """Iterate `(iteration, batch)` for iterations start..end-1; `make(iteration)` draws one batch
    (any exception it raises is re-raised in the consumer). depth 0: no thread, draw on demand."""

    def __init__(self, make: Callable[[int], Batch], start: int, end: int, depth: int = 2,
                 skipped: Callable[[], dict] | None = None):
        self.make, self.start, self.end, self.depth = make, start, end, depth
        self._record = skipped or dict
        self.skipped: dict = dict(self._record())  # as of the last batch handed out
        self.waited = 0.0  # seconds the last `next` waited for its batch
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
            self._thread.start()

    def _produce(self) -> None:
        for it in range(self.start, self.end):
            try:
                item = (it, self.make(it), dict(self._record()), None)
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
                item = (it, None, {}, err)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or item[3] is not None:
                return

    def __iter__(self):
        for it in range(self.start, self.end):
            began = time.perf_counter()
            if self._thread is None:
                item = (it, self.make(it), dict(self._record()), None)
            else:
                item = self._queue.get()
            self.waited = time.perf_counter() - began
            got, batch, skipped, err = item
            if err is not None:
                self.close()
                raise err
            assert got == it, f"prefetched iteration {got} where {it} was due"
            self.skipped = skipped
            yield it, batch
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
