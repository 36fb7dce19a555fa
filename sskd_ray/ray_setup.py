"""Starting or joining Ray the same way in every job (docs/ray_notes.md, "Starting and joining")."""
from __future__ import annotations

import os
from pathlib import Path

from sskd_ray import storage
from sskd_ray.redaction import redact


LOCAL_ENV = "SSKD_RAY_LOCAL"  # =1: always a private local Ray, even where a cluster runs on this machine
# Set by Ray's job supervisor for the driver of a submitted job (with RAY_ADDRESS): its runtime
# environment (the uploaded working_dir) lives in that cluster's GCS, so a private Ray started there
# fails in every worker ("Failed to download runtime_env file package gcs://_ray_pkg_...").
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _gcs_answers(address: str, timeout_s: float) -> bool:
    """Whether something accepts a TCP connection at `address` ("host:port", "ray://host:port"), within
    `timeout_s`. Ray's own connect to an address where nothing listens does not fail, it keeps
    retrying (docs/ray_notes.md, "Starting and joining"), so every join is checked here first."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return True  # not host:port ("auto", a name Ray resolves): leave it to ray.init
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def _started_head_address() -> str | None:
    """The address `ray start --head` on this machine left in Ray's temp folder (ray_current_cluster;
    RAY_TMPDIR moves it), or None."""
    try:
        from ray._private.utils import read_ray_address
    except ImportError:  # moved in a later Ray: then only RAY_ADDRESS / address= join a cluster
        return None
    return read_ray_address() or None


AUTH_HELP = ("set RAY_AUTH_MODE=token and give this process the cluster's token (RAY_AUTH_TOKEN_PATH=<file>, "
             "or the file ~/.ray/auth_token); docs/cluster.md \"Security\"")


def _refused_token(err: BaseException) -> bool:
    """Whether `err`, or an exception it was raised from, is Ray refusing this process's token."""
    from ray.exceptions import AuthenticationError

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, AuthenticationError) or "InvalidAuthToken" in str(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _join(address: str) -> None:
    """ray.init on a running cluster; a token it refuses (or lacks) is one clear error, not Ray's."""
    import ray

    try:
        ray.init(address=address, log_to_driver=True)
    except Exception as err:  # noqa: BLE001 - Ray raises the refusal itself or wraps it ("Failed to connect to GCS")
        if not _refused_token(err):
            raise
        ray.shutdown()
        raise ConnectionError(f"the Ray cluster at {redact(address)} requires token authentication and refused "
                              f"this process: {AUTH_HELP}") from None


def init_ray(local_cpus: int | None = None, address: str | None = None, connect_timeout_s: float = 10.0) -> dict:
    """Join a running Ray cluster, else start a private local one; print which, and return
    {"mode", "address", "CPU", "GPU"}.

    `address` (or RAY_ADDRESS, as under `ray job submit`) names a cluster; nothing answering there is an
    error that names it. "local" (or SSKD_RAY_LOCAL=1) forces a private local Ray, except in the driver
    of a job submitted with `ray job submit`, which always joins its cluster. With neither, a
    cluster that `ray start --head` started on this machine is joined when it answers, and otherwise
    (none, or one stopped without `ray stop`) a local Ray starts. Never joined: another process's
    private Ray found by scanning the machine's processes (Ray's legacy `address="auto"`): this
    process does not own it and cannot know whether it is shutting down. Resources are passed only
    when starting one (Ray refuses them when connecting). Locally the CPU count is logical, at least
    4, so an actor pool cannot take every slot and starve the read tasks that feed it on a 2-core
    machine (docs/ray_notes.md, "Starting and joining")."""
    import ray

    if not ray.is_initialized():
        explicit = address or os.environ.get("RAY_ADDRESS", "")
        local = explicit == "local" or (not address and os.environ.get(LOCAL_ENV, "") not in ("", "0"))
        if local and os.environ.get(SUBMITTED_JOB_ENV) and os.environ.get("RAY_ADDRESS"):
            print(f"ray: this is the driver of a job submitted with `ray job submit`: joining its cluster, "
                  f"{LOCAL_ENV} / address='local' ignored (a private Ray cannot serve the job's runtime environment)")
            explicit, local = os.environ["RAY_ADDRESS"], False
        cpus = local_cpus or max(4, os.cpu_count() or 1)
        if not local and explicit:
            if not _gcs_answers(explicit, connect_timeout_s):
                source = "address=" if address else "RAY_ADDRESS="
                raise ConnectionError(f"no Ray cluster answers at {source}{redact(explicit)} within "
                                      f"{connect_timeout_s:g} s: start it, correct the address, or set "
                                      f"{LOCAL_ENV}=1 for a private local Ray")
            _join(explicit)
        elif not local:
            head = _started_head_address()
            if head and _gcs_answers(head, connect_timeout_s):
                try:
                    _join(head)
                except ConnectionError as err:
                    if "token authentication" in str(err):
                        raise
                    print(f"ray: could not join the cluster at {redact(head)} ({err}); starting a local Ray")
                    ray.shutdown()
                    local = True
            else:
                if head:
                    print(f"ray: `ray start` left the address {redact(head)} on this machine, but no Ray answers "
                          f"there (stopped without `ray stop`); starting a local Ray")
                local = True
        if local:
            ray.init(address="local", num_cpus=cpus)
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
