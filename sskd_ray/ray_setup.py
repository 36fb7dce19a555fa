"""Starting or joining Ray the same way in every job (RAY_NOTES.md: pass resources only locally)."""
from __future__ import annotations

import os
from pathlib import Path

from sskd_ray import storage


LOCAL_ENV = "SSKD_RAY_LOCAL"  # =1: always a private local Ray, even where a cluster runs on this machine


def init_ray(local_cpus: int | None = None, address: str | None = None) -> dict:
    """Join a running Ray cluster, else start a private local one; print which, and return
    {"mode", "address", "CPU", "GPU"}.

    `address` (or RAY_ADDRESS, as under `ray job submit`) names a cluster; "local" (or SSKD_RAY_LOCAL=1)
    forces a private local Ray. With neither, `ray.init()` finds a cluster started on this machine
    by `ray start --head` and joins it, and only when there is none starts a local Ray. Resources
    are passed only when starting one (Ray refuses them when connecting, RAY_NOTES.md). Locally the
    CPU count is logical: at least 4, so an actor pool cannot take every slot and starve the read
    tasks on a 2-core machine (the hang seen in RAY_NOTES.md)."""
    import ray

    if not ray.is_initialized():
        wanted = address or os.environ.get("RAY_ADDRESS", "")
        local = wanted == "local" or (not address and os.environ.get(LOCAL_ENV, "") not in ("", "0"))
        cpus = local_cpus or max(4, os.cpu_count() or 1)
        if local:
            ray.init(address="local", num_cpus=cpus)
        elif wanted:
            ray.init(address=wanted, log_to_driver=True)
        else:
            try:
                ray.init(address="auto", log_to_driver=True)  # a `ray start --head` on this machine
            except ConnectionError:
                ray.init(address="local", num_cpus=cpus)
                local = True
        mode = "started a local Ray" if local else "joined the Ray cluster"
    else:
        mode = "using the Ray already initialised"
    context = ray.get_runtime_context()
    resources = ray.cluster_resources()
    info = {"mode": mode, "address": context.gcs_address, "CPU": resources.get("CPU", 0),
            "GPU": resources.get("GPU", 0)}
    print(f"ray: {mode} at {info['address']} ({info['CPU']:g} CPUs, {info['GPU']:g} GPUs, "
          f"{len([n for n in ray.nodes() if n['Alive']])} node(s)); {LOCAL_ENV}=1 forces a private local Ray")
    return info


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
