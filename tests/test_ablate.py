"""Ablation tables (jobs/ablate.py): the table arithmetic by hand, the dependency keys (what is
shared, what is not), and a smoke run of Table 12 that is then run again and resumes (the other
tables differ in which steps the plan holds, tested above without training)."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sskd_ray.tune.ablation_plan import TITLES, plan_ablation
from sskd_ray.tune.ablation_tables import diagnostics, mean_std, orderings, table_rows

REPO = Path(__file__).resolve().parents[1]
DEFAULT = [str(REPO / "configs" / "default.yaml")]


def test_mean_std_is_the_sample_std_over_finite_values():
    mean, std, n = mean_std([30.0, 32.0, 34.0])
    assert (mean, n) == (32.0, 3) and std == pytest.approx(2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    assert mean_std([5.0, None, float("nan")]) == (5.0, None, 1)  # one value: no std
    assert mean_std([]) == (None, None, 0)


def test_diagnostics_average_the_fnr_and_keep_the_last_margin():
    history = [{"iteration": 10, "false_negative_rate": 0.10, "instance_margin": 0.2},
               {"iteration": 20, "event": "resumed"},
               {"iteration": 20, "false_negative_rate": 0.04, "instance_margin": 0.5}]
    assert diagnostics(history) == {"false_negative_rate": pytest.approx(0.07), "instance_margin": 0.5}
    assert diagnostics([{"iteration": 1, "loss": 1.0}]) == {"false_negative_rate": None, "instance_margin": None}


@pytest.fixture(scope="module")
def plan():
    return plan_ablation(DEFAULT, [], seeds=(0, 1))


def _row(plan, table, label, seed, column=""):
    return next(r for r in plan.rows if r.table == table and r.label == label and r.seed == seed and r.column == column)


def test_rows_that_need_the_same_work_name_the_same_step(plan):
    full = _row(plan, 3, "Full three stages", 0)
    all_three = _row(plan, 2, "L_sup + L_pl + L_con", 0)
    assert plan.steps[full.step].inputs[1] == all_three.step  # Table 3's full = Table 2's all three + refine
    assert all_three.step == _row(plan, 4, "Fusion (ours)", 0).step == _row(plan, 12, "Student under T2", 0).step
    assert full.step == _row(plan, 6, "Full method", 0, "0.1").step  # the default split is Table 6's 10 %
    # every student variant of a seed reads the same adapted teacher's labeling pass
    pools = {plan.steps[_row(plan, t, label, 0).step].inputs[1] for t, label in
             ((2, "L_sup + L_pl"), (2, "L_sup + L_con"), (4, "Uniform"), (4, "Class-only"))}
    assert len(pools) == 1
    teacher = plan.steps[pools.pop()].inputs[1]
    assert teacher == _row(plan, 1, "Self-training with L_con (ours)", 0).step == _row(plan, 12, "Teacher T2 (adapted)", 0).step


def test_seeds_and_fractions_do_not_share_training(plan):
    for table, label in ((1, "Self-training with L_con (ours)"), (2, "L_sup"), (3, "Full three stages")):
        assert _row(plan, table, label, 0).step != _row(plan, table, label, 1).step
    tenth, third = _row(plan, 6, "Full method", 0, "0.1"), _row(plan, 6, "Full method", 0, "0.3")
    assert tenth.step != third.step
    assert plan.steps[plan.steps[tenth.step].inputs[0]].kind == "data"
    assert plan.steps[tenth.step].inputs[0] != plan.steps[third.step].inputs[0]  # another split
    # the split itself is shared by the seeds (data.seed fixes it)
    assert plan.steps[tenth.step].inputs[0] == plan.steps[_row(plan, 6, "Full method", 1, "0.1").step].inputs[0]


def test_keys_hash_only_what_a_step_reads():
    a = plan_ablation(DEFAULT, [], tables=(12,), seeds=(0,))
    b = plan_ablation(DEFAULT, ["stages.distill.lr=0.002"], tables=(12,), seeds=(0,))
    kinds = lambda p: {s.key: s.kind for s in p.steps.values()}  # noqa: E731
    same = set(kinds(a)) & set(kinds(b))
    assert {kinds(a)[k] for k in same} == {"data", "teacher_initial", "teacher_finetune", "teacher_selftrain", "label"}
    assert {kinds(a)[k] for k in set(kinds(a)) - same} == {"distill"}


def test_each_step_has_one_owner_and_reads_only_earlier_work(plan):
    """No two trials run the same step, and a trial reads only what an earlier phase, or an earlier
    step of its own, finished: concurrent trials cannot race."""
    order = list(plan.steps)
    for step in plan.steps.values():
        for key in step.inputs:
            source = plan.steps[key]
            assert source.phase < step.phase or (source.group == step.group and order.index(key) < order.index(step.key))
    owners = [s.key for phase in (1, 2) for g in plan.groups(phase).values() for s in g]
    assert len(owners) == len(set(owners)) == sum(s.phase > 0 for s in plan.steps.values())


def test_table_rows_and_orderings_by_hand(plan):
    measured = {}
    rows_12 = {r.label: r for r in plan.rows if r.table == 12}
    values = {"Student under T2": {0: 30.0, 1: 34.0}, "Student under T1": {0: 31.0, 1: 20.0},
              "Teacher T2 (adapted)": {0: 10.0, 1: 12.0}, "Teacher T1 (zero-shot)": {0: 11.0, 1: 13.0}}
    for label, per_seed in values.items():
        for seed, ap in per_seed.items():
            step = next(r.step for r in plan.rows if r.table == 12 and r.label == label and r.seed == seed)
            measured[step] = {"mask_AP": ap, "mask_AP50": 2 * ap}
    rows = [r for r in table_rows(plan, measured) if r["table"] == 12]
    t2 = next(r for r in rows if r["row"] == "Student under T2")
    assert (t2["mask_AP_mean"], t2["mask_AP50_mean"], t2["n"]) == (32.0, 64.0, 2)
    assert t2["mask_AP_std"] == pytest.approx(math.sqrt(8.0))  # (2^2 + 2^2) / (2 - 1)
    assert (t2["paper_AP"], t2["paper_AP50"]) == rows_12["Student under T2"].paper == (32.2, 56.5)
    found = {(o["better"], o["worse"]): o for o in orderings(12, rows)}
    students = found[("Student under T2", "Student under T1")]
    assert students["holds"] and students["gap"] == pytest.approx(6.5) and (students["seeds_holding"], students["seeds"]) == (1, 2)
    teachers = found[("Teacher T2 (adapted)", "Teacher T1 (zero-shot)")]
    assert not teachers["holds"] and teachers["seeds_holding"] == 0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Table 12 on the smoke setting (the zero-shot and the adapted teacher each label the pool, a
    student from each), then the same command again."""
    out = tmp_path_factory.mktemp("ablate") / "out"
    cmd = [sys.executable, "jobs/ablate.py", "--smoke", "--tables", "12", "--out", str(out), "--max-concurrent", "2"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    trained = {p: p.stat().st_mtime for p in out.glob("steps/*/final/model.safetensors")}
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return out, first, second, trained


@pytest.mark.long
def test_smoke_tables_have_their_rows_with_finite_numbers(smoke_run):
    out, first, _, _ = smoke_run
    for table, labels in ((12, {"Teacher T1 (zero-shot)", "Teacher T2 (adapted)", "Student under T1", "Student under T2"}),):
        rows = list(csv.DictReader((out / "ablations" / f"table{table}.csv").open()))
        assert {r["row"] for r in rows} == labels
        assert all(math.isfinite(float(r["mask_AP_mean"])) and r["n"] == "1" for r in rows)
        assert (out / "ablations" / f"table{table}.png").stat().st_size > 5_000
    report = (out / "ablations.md").read_text()
    assert TITLES[12] in report and TITLES[2] not in report and "Command: `python jobs/ablate.py --smoke" in report
    assert not (REPO / "docs" / "ablations" / "table12.csv").exists() or "--smoke" not in (REPO / "docs" / "ablations.md").read_text()


@pytest.mark.long
def test_shared_steps_ran_once(smoke_run):
    out = smoke_run[0]
    kinds = [p.parent.name.split("-")[0] for p in out.glob("steps/*/DONE")]
    # the fine-tuned teacher labels the pool for self-training; the zero-shot and the adapted teacher
    # each label it once more, and one student learns from each of those two passes
    assert sorted(kinds) == sorted(["data", "teacher_initial", "teacher_finetune", "teacher_selftrain",
                                    "label", "label", "label", "distill", "distill"])
    assert len(list((out / "ray_train").iterdir())) == 4  # one Ray Train run per trained step


@pytest.mark.long
def test_rerun_resumes_without_training_again(smoke_run):
    out, _, second, trained = smoke_run
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the sweep" in second.stdout
    assert len(trained) == 5 and all(p.stat().st_mtime == t for p, t in trained.items())
