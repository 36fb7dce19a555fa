"""A run is bit-for-bit repeatable on one machine: the smoke pipeline twice, in two run directories,
gives the same metrics (val and test), the same pseudo-label stores and the same trained weights,
stage by stage. What may still differ between machines (the CPU's vector instructions, library
versions, thread counts) is documented in docs/benchmarks.md "reproducibility"."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sskd_ray.models.checkpoint import is_trained_folder, read_weights

REPO = Path(__file__).resolve().parents[1]
STAGES = ("teacher/initial", "teacher/finetune", "teacher/selftrain", "student/distill", "student/refine",
          "student/baseline")


def _run(run_dir: Path) -> None:
    done = subprocess.run([sys.executable, "jobs/full_pipeline.py", "--smoke", "--run-dir", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def _fingerprint(run_dir: Path) -> dict:
    out = {}
    for stage in STAGES:
        metrics = json.loads((run_dir / stage / "metrics.json").read_text())
        out[f"{stage} metrics"] = {k: v for k, v in metrics.items() if "mask_AP" in k}
        weights = run_dir / stage / "final"
        if is_trained_folder(str(weights)):
            state = read_weights(str(weights))
            # by name: safetensors hands the tensors back in no fixed order
            out[f"{stage} weights"] = hashlib.sha256(b"".join(name.encode() + state[name].numpy().tobytes()
                                                              for name in sorted(state))).hexdigest()
    for label_pass in ("finetune", "adapted"):
        shards = sorted((run_dir / "pseudo" / label_pass).glob("shard-*.parquet"))  # names carry the run's id
        table = pa.concat_tables([pq.read_table(p) for p in shards]).sort_by("image_id")
        out[f"{label_pass} labels"] = hashlib.sha256(json.dumps(table.select(["image_id", "instances"]).to_pylist(),
                                                                sort_keys=True).encode()).hexdigest()
    return out


@pytest.mark.slow
@pytest.mark.long
def test_the_smoke_pipeline_twice_gives_identical_results(tmp_path):
    _run(tmp_path / "a")
    _run(tmp_path / "b")
    first, second = _fingerprint(tmp_path / "a"), _fingerprint(tmp_path / "b")
    assert len(first) == 2 * len(STAGES) - 1 + 2  # the zero-shot teacher has metrics, no trained weights
    differ = [key for key in first if first[key] != second[key]]
    assert not differ, {key: (first[key], second[key]) for key in differ}
