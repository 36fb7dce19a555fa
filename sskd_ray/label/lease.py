"""One labeling run at a time per pseudo-label store: a lease with a heartbeat (issue 29).

Two runs into one store would both plan the same pending images and both write them (the store's
rows are keyed by image, but nothing else stopped a second run). A run therefore holds the store's
lease while it plans, labels and summarises: a claim file `<store>/leases/<lease id>.json` that its
driver rewrites every `ttl / 6` seconds. Another run that finds a live claim waits, saying who holds
the store, and plans only when the claim is gone, by then finding those images labeled; a claim not
rewritten for `ttl` seconds belongs to a run that died, and is removed by whoever finds it.

Taking the lease needs no atomic create (object stores have none that pyarrow offers), only that a
write is visible to every later list, which local disks, NFS, S3 and GCS all give: a contender writes
its claim, then lists the claims, and backs off (removing its own) when it sees any other live one.
Of two contenders at least one sees both, so at most one proceeds; both backing off is retried
after a random pause. Ages are measured against the store's own clock (the modification time of
the contender's claim just written), never the machines'.

A lease is also a fence: the labeling actors check that their run's claim still exists before they
commit a shard, so a run that lost its lease (stalled past the ttl, and found dead by another) fails
instead of writing rows the other run writes too.
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow.fs as pafs

from sskd_ray import storage
from sskd_ray.redaction import redact

LEASE_DIR = "leases"
_HELD: dict[str, "Lease"] = {}  # store -> the lease this process holds (re-entrant per process)


class StoreBusyError(RuntimeError):
    """Another run held the store for longer than the caller agreed to wait."""


class LeaseLostError(RuntimeError):
    """This run's lease was removed (it stopped renewing it for longer than the ttl): stop writing."""


@dataclass
class Lease:
    store: str
    id: str
    path: str
    ttl_s: float
    lost: threading.Event = field(default_factory=threading.Event)


def new_lease_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"


def _claims(store: str) -> list[tuple[str, float]]:
    """(path, modification time in s) of every claim in the store."""
    fs, inner = storage.filesystem(storage.join(store, LEASE_DIR))
    infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return [(storage.join(store, LEASE_DIR, i.base_name), i.mtime.timestamp())
            for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".json") and i.mtime]


def _mtime(path: str) -> float:
    fs, inner = storage.filesystem(path)
    return fs.get_file_info(inner).mtime.timestamp()


def _describe(path: str) -> str:
    try:
        info = storage.read_json(path)
        return f"run {info['id']} (host {info['host']}, pid {info['pid']}, since {info['started']})"
    except (OSError, ValueError, KeyError):
        return f"the run of {storage.name(path)}"


def _try_claim(store: str, lease: Lease, info: dict) -> list[str]:
    """Write our claim; -> the other live claims (we proceed when there are none). Expired claims
    are removed on the way."""
    storage.write_json(lease.path, info)
    now = _mtime(lease.path)
    live = []
    for path, mtime in _claims(store):
        if path == lease.path:
            continue
        if now - mtime > lease.ttl_s:
            print(redact(f"lease: {_describe(path)} has not renewed its lease of {store} for {now - mtime:.0f} s "
                         f"(ttl {lease.ttl_s:g} s): it stopped; removing its claim"), flush=True)
            with contextlib.suppress(OSError):
                storage.remove(path)
        else:
            live.append(path)
    if live:
        storage.remove(lease.path)
    return live


def _heartbeat(lease: Lease, info: dict, stop: threading.Event) -> None:
    """Rewrite the claim every ttl / 6 s; a claim that vanished means another run found us dead."""
    while not stop.wait(lease.ttl_s / 6):
        if not storage.is_file(lease.path):
            lease.lost.set()
            print(redact(f"lease: the lease of {lease.store} was taken from this run (no renewal for "
                         f"{lease.ttl_s:g} s): its remaining shards will not be written"), flush=True)
            return
        info["beats"] += 1
        with contextlib.suppress(OSError):  # a missed beat is retried; the ttl allows six
            storage.write_json(lease.path, info)


@contextlib.contextmanager
def hold_store(store: str, ttl_s: float = 60.0, wait_s: float = 0.0, poll_s: float = 0.0) -> Iterator[Lease]:
    """Hold `store`'s lease for the block: wait while another live run holds it (for ever when
    `wait_s` is 0, else StoreBusyError after `wait_s`), then renew it until the block ends."""
    store = storage.normalize(store)
    if store in _HELD:  # the same process again (label_pool -> run_labeling): already ours
        yield _HELD[store]
        return
    lease_id = new_lease_id()
    lease = Lease(store, lease_id, storage.join(store, LEASE_DIR, f"{lease_id}.json"), ttl_s)
    info = {"id": lease_id, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "ttl_s": ttl_s, "beats": 0}
    poll_s = poll_s or min(5.0, ttl_s / 6)
    began, said = time.monotonic(), False
    while live := _try_claim(store, lease, info):
        if not said:
            print(redact(f"lease: {store} is being labeled by {_describe(live[0])}: waiting for it to finish "
                         f"(a lease expires {ttl_s:g} s after its run stops renewing it)"), flush=True)
            said = True
        if wait_s and time.monotonic() - began > wait_s:
            raise StoreBusyError(redact(f"{store} is still held by {_describe(live[0])} after {wait_s:g} s"))
        time.sleep(poll_s * random.uniform(0.5, 1.5))  # random: two contenders that both backed off part
    if said:
        print(redact(f"lease: {store} is free after {time.monotonic() - began:.0f} s; this run holds it now"),
              flush=True)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lease, info, stop), name="store-lease", daemon=True)
    beat.start()
    _HELD[store] = lease
    try:
        yield lease
    finally:
        _HELD.pop(store, None)
        stop.set()
        beat.join(timeout=30)
        with contextlib.suppress(OSError):
            storage.remove(lease.path)


def check_held(lease_path: str) -> None:
    """For the actors, before a shard is committed: the run's claim must still be there."""
    if lease_path and not storage.is_file(lease_path):
        raise LeaseLostError(redact(f"the store's lease {lease_path} is gone: this run stopped renewing it and "
                                    f"another run took the store over; nothing more is written by this run"))


__all__ = ["Lease", "LeaseLostError", "StoreBusyError", "check_held", "hold_store"]
