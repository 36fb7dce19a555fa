"""Starting or joining Ray the same way in every job (RAY_NOTES.md: pass resources only locally)."""
from __future__ import annotations

import os
from pathlib import Path

from sskd_ray import storage


def init_ray(local_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), else start a local Ray.

    Locally the CPU count is logical: at least 4, so an actor pool cannot take every slot and
    starve the read tasks on a 2-core machine (the hang seen in RAY_NOTES.md)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=local_cpus or max(4, os.cpu_count() or 1))


def check_shared_storage(path: str) -> None:
    """On a cluster of several nodes, a folder that workers read or write (Ray Train's storage, the
    run directory, a pseudo-label store) must be visible from every node: write a marker here and
    look for it from a task pinned to each node. URIs (s3://, gs://) pass as is."""
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if storage.is_uri(path) or not ray.is_initialized():
        return
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) <= 1:
        return
    marker = Path(path) / f".shared-check-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("sskd-ray\n")

    @ray.remote(num_cpus=0)
    def visible(path: str) -> bool:
        return Path(path).exists()

    try:
        seen = ray.get([visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote(str(marker)) for n in nodes])
    finally:
        marker.unlink(missing_ok=True)
    blind = [f"{n['NodeManagerAddress']} (id {n['NodeID'][:12]})" for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise RuntimeError(f"storage path {path} is not visible from node(s) {blind}: on a multi-node cluster "
                           f"use a shared file system (EFS/NFS mounted on every node) or an s3:// / gs:// URI")
