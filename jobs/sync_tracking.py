"""Send the MLflow calls a run kept while its tracking server did not answer.

    python jobs/sync_tracking.py RUN_DIR [--tracking-uri URI] [--wait SECONDS]

A job whose server was still down when it ended leaves its calls in RUN_DIR/mlflow-pending/ (a stage of
a sweep or an ablation in its own folder's); the next run in RUN_DIR sends them by itself, this sends
them now. Every mlflow-pending folder under RUN_DIR is sent, oldest call first. The server is
--tracking-uri, else MLFLOW_TRACKING_URI, else the one the calls were made for (when it carries no
credentials: those belong in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD). Exits 1 when calls
are still kept (the server did not answer within --wait seconds).
"""
from __future__ import annotations

import argparse
import os
import sys

from sskd_ray import storage, tracking
from sskd_ray import tracking_journal as tj
from sskd_ray.redaction import MASK, redact


def pending_folders(root: str) -> list[str]:
    if storage.name(root) == tj.PENDING_DIR:
        return [storage.normalize(root)]
    kept = storage.list_files(root, "*.json", recursive=True)
    return sorted({storage.parent(p) for p in kept if storage.name(storage.parent(p)) == tj.PENDING_DIR})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--tracking-uri", default="")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server")
    args = parser.parse_args()
    left = 0
    for folder in pending_folders(args.run_dir):
        entries = tj.Journal(folder, "").entries()
        if not entries:
            continue
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or storage.read_json(entries[0])["uri"]
        if MASK in uri:
            parser.exit(2, f"sync_tracking: error: the calls in {folder} were made for {uri}: give the server with "
                           f"--tracking-uri and its credentials in MLFLOW_TRACKING_USERNAME / _PASSWORD\n")
        tj.bound_http()
        journal = tj.Journal(folder, uri, retry_s=min(10.0, args.wait or 10.0))
        print(redact(f"{folder}: {len(entries)} kept call(s) for {uri}"))
        left += tj.drain(journal, tracking._apply, args.wait)
    print(f"sync_tracking: {left} call(s) still kept" if left else "sync_tracking: nothing left to send")
    sys.exit(1 if left else 0)


if __name__ == "__main__":
    main()
