"""Starting or joining Ray the same way in every job (RAY_NOTES.md: pass resources only locally)."""
from __future__ import annotations

import os


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
