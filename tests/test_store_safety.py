"""Issue 29 (3, 4): one pseudo-label store, several runs; damaged shards.

Real jobs (`jobs/pseudo_label.py`, each with its own local Ray), real Parquet, a real S3-protocol
server (moto): two runs started at once leave every image exactly once; a run waits while another
holds the store; a dead run's lease expires; a shard cut short is set aside and its images labeled
again, and a training stage that meets one names the file and the command, never pyarrow's error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sskd_ray import storage
from sskd_ray.config import LossConfig, ModelConfig, StageConfig
from sskd_ray.data.pseudo_labels import (DamagedStoreError, duplicate_rows, read_store, shard_paths, stored_keys,
                                         write_shard)
from sskd_ray.data.store_reader import StoreShare
from sskd_ray.label.lease import LEASE_DIR, LeaseLostError, check_held, hold_store

ROOT = Path(__file__).resolve().parents[1]


def _job(images, out, *extra, env_extra: dict | None = None) -> tuple[list[str], dict]:
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT), "SSKD_RAY_LOCAL": "1",
           **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    return [sys.executable, str(ROOT / "jobs" / "pseudo_label.py"), "--images", str(images), "--teacher", "builtin",
            "--out", str(out), "--smoke", "label.score_threshold=0.0", "label.lease_seconds=12", *extra], env


def _row(i: int, key: str) -> dict:
    return {"image_id": i, "file_name": f"im{i}.png", "height": 8, "width": 8, "instances": [], "teacher": "t",
            "key": key}


def _keys(out) -> list[str]:
    return read_store(out).column("key").to_pylist()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_jobs_at_once_label_every_image_once(builtin_dir, tmp_path, where, request):
    """The issue's trial: two identical jobs a moment apart on one pool and one --out. Both exit 0; the
    store holds each of the 24 images once; the runs' own counts add up to 24 (no image labeled twice)."""
    env_extra = request.getfixturevalue("s3_env") if where == "s3" else {}
    out = f"s3://sskd/concurrent-{uuid.uuid4().hex[:8]}" if where == "s3" else str(tmp_path / "out")
    procs = []
    for name in ("a", "b"):
        cmd, env = _job(builtin_dir / "train.json", out, "label.images_per_shard=1",
                        env_extra={**env_extra, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / name}.db"})
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(1.0)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 24
    summary = json.loads(storage.read_text(storage.join(out, "summary.json")))
    assert summary["store_rows"] == 24 and summary["problems"] == []
    assert sum(run["images_labeled"] for run in summary["runs"]) == 24, summary["runs"]
    assert len(summary["runs"]) == 2
    waited = [o for o in outputs if "is being labeled by run" in o]
    print(f"{where}: {len(waited)} of 2 jobs waited for the other's lease")
    assert not storage.list_files(storage.join(out, LEASE_DIR)), "a lease was left behind"


@pytest.mark.slow
def test_a_run_waits_while_another_holds_the_store(builtin_dir, tmp_path):
    """Deterministic: this process holds the store; the job says who holds it and writes nothing until
    the lease is released, then labels the pool."""
    out = tmp_path / "out"
    cmd, env = _job(builtin_dir / "train.json", out, "label.images_per_shard=8")
    with hold_store(str(out), ttl_s=12) as lease:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "is being labeled by run" in line:
                break
        assert any(lease.id in line for line in lines), "".join(lines)[-3000:]
        time.sleep(3)  # the job keeps waiting: nothing written while the lease is held
        assert proc.poll() is None and shard_paths(out) == []
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, rest[-3000:]
    assert "is free after" in rest
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 24


def test_a_dead_runs_lease_expires_and_a_lost_lease_stops_writes(tmp_path, capsys):
    """A claim nobody renews (its run died) is removed after the ttl, by the store's clock; a run whose
    claim is gone writes nothing more."""
    store = tmp_path / "out"
    stale = store / LEASE_DIR / "20260101T000000-elsewhere-1-abcdef.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"id": "dead-run", "host": "elsewhere", "pid": 1, "started": "then"}))
    os.utime(stale, (time.time() - 120, time.time() - 120))
    began = time.monotonic()
    with hold_store(str(store), ttl_s=30) as lease:
        assert time.monotonic() - began < 5
        assert not stale.exists() and Path(lease.path).is_file()
        check_held(lease.path)
        with hold_store(str(store), ttl_s=30) as again:  # re-entrant within a process
            assert again is lease
        Path(lease.path).unlink()  # what another run does to a claim it found expired
        with pytest.raises(LeaseLostError, match="nothing more is written"):
            check_held(lease.path)
    assert "run dead-run (host elsewhere, pid 1, since then) has not renewed its lease" in capsys.readouterr().out


@pytest.mark.slow
def test_a_shard_cut_short_is_set_aside_and_relabeled(builtin_dir, tmp_path):
    """The issue's trial: a store with one shard cut short. Reading its keys names the file and the
    command (not pyarrow's 'Parquet magic bytes not found' traceback); the re-run sets the shard aside,
    lists it, labels its images again, and the store ends with every image once."""
    out = tmp_path / "out"
    cmd, env = _job(builtin_dir / "train.json", out, "label.images_per_shard=4")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    victim = Path(shard_paths(out)[2])
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DamagedStoreError) as caught:
        stored_keys(out)
    message = str(caught.value)
    assert str(victim) in message and "Parquet magic bytes not found" in message
    assert f"python jobs/pseudo_label.py --images {out / 'manifest.parquet'} --reuse-manifest --teacher builtin " \
           f"--smoke --out {out}" in message
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stderr and "ArrowInvalid" not in again.stderr
    assert f"damaged shard(s) set aside in {out / 'damaged'}" in again.stdout and victim.name in again.stdout
    assert (out / "damaged" / victim.name).is_file() and not victim.exists()
    run = json.loads((out / "summary.json").read_text())["run"]
    assert [d["shard"] for d in run["damaged_shards"]] == [str(victim)]
    assert run["images_pending"] == 4 and run["images_labeled"] == 4
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 24


def test_a_training_stage_meeting_a_damaged_shard_names_it(tmp_path, monkeypatch):
    """Before a stage reads the store (and in a worker opening its share): which file, what to run."""
    from sskd_ray.train.stages import StageSpec, run_stage

    store = tmp_path / "store"
    write_shard(store / "shard-a-000000-x.parquet", [_row(i, f"/pool/{i}.png") for i in range(4)])
    write_shard(store / "shard-a-000001-y.parquet", [_row(i, f"/pool/{i}.png") for i in range(4, 8)])
    (store / "teacher.json").write_text(json.dumps({"teacher": "t", "source": "--teacher runs/x/teacher/final"}))
    bad = store / "shard-a-000001-y.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    spec = StageSpec("distill", str(tmp_path / "stage"), ModelConfig(), StageConfig(use_pseudo_labels=True),
                     LossConfig(), {"pseudo_dir": str(store)}, [], [])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(DamagedStoreError) as caught:
        run_stage(spec, f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    assert str(bad) in str(caught.value) and "--teacher runs/x/teacher/final" in str(caught.value)
    assert not (tmp_path / "mlflow.db").exists()  # stopped before anything started
    with pytest.raises(DamagedStoreError, match=str(bad)):
        StoreShare.open(str(store), 0, 1)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_training_reads_each_image_once_whatever_the_store_holds(tmp_path, world):
    """Two runs' shards labeling overlapping images (a store written before the lease): the driver finds
    the second rows once, and the ranks' shares together hold every image exactly once."""
    store = tmp_path / "store"
    write_shard(store / "shard-r1-000000-a.parquet", [_row(i, f"/pool/{i}.png") for i in range(6)])
    write_shard(store / "shard-r2-000000-b.parquet", [_row(i, f"/pool/{i}.png") for i in range(3, 9)])
    write_shard(store / "shard-r2-000001-c.parquet", [_row(i, f"/pool/{i}.png") for i in (0, 9)])
    skip = duplicate_rows(store)
    assert skip == {str(store / "shard-r2-000000-b.parquet"): [0, 1, 2], str(store / "shard-r2-000001-c.parquet"): [0]}
    shares = [StoreShare.open(str(store), rank, world, skip=skip) for rank in range(world)]
    seen = [share.row(i)["image_id"] for share in shares for i in range(len(share))]
    assert sorted(seen) == list(range(10))
    unskipped = sum(len(StoreShare.open(str(store), rank, world)) for rank in range(world))
    assert unskipped == 14  # without the driver's list, the 4 second rows would be read too
