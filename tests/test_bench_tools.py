"""The arithmetic of bench/ tools: method_gain's goals and mean +- std table, step_memory's count of
the bytes autograd saves."""
import json

import pytest
import torch

from bench import method_gain, step_memory

AP = {"teacher_initial": 2.0, "teacher_finetune": 10.0, "teacher_selftrain": 12.0, "baseline": 8.0, "distill": 9.0,
      "refine": 11.0}


def _stages(ap: dict) -> dict:
    return {k: {"mask_AP": v, "mask_AP50": 2 * v, "mask_AP_agnostic": v + 1} for k, v in ap.items()}


def test_goals_by_hand():
    slack = dict(method_gain.goals(_stages(AP)))
    assert slack["teacher zero-shot > 0"] == 2.0
    assert slack["teacher fine-tuned > zero-shot"] == 8.0
    assert slack["teacher adapted >= fine-tuned"] == 2.0
    assert slack["student distilled > supervised-only"] == 1.0
    assert slack["student refined >= 1.5 x supervised-only"] == pytest.approx(-1.0)  # 11 < 12: missed by 1
    assert slack["stretch: student refined >= adapted teacher"] == pytest.approx(-1.0)
    assert method_gain.holds("a >= b", 0.0) and not method_gain.holds("a > b", 0.0)


def test_table_mean_std_and_goal_counts(tmp_path):
    per_seed = {}
    for seed, shift in ((0, 0.0), (1, 2.0), (2, 4.0)):
        run = tmp_path / f"seed{seed}"
        for name, folder, _ in method_gain.STAGES:
            (run / folder).mkdir(parents=True)
            ap = AP[name] + (shift if name == "refine" else 0.0)
            (run / folder / "metrics.json").write_text(json.dumps({**_stages({name: ap})[name], "extra": "x"}))
        (run / "pseudo" / "adapted").mkdir(parents=True)
        (run / "pseudo" / "adapted" / "summary.json").write_text(json.dumps(
            {"images_labeled": 10, "instances": 45, "quality": {"precision": 0.5, "note": "text is left out"}}))
        per_seed[seed] = method_gain.read_seed(run)
    assert per_seed[1]["pseudo_labels"]["adapted"] == {"instances_per_image": 4.5, "precision": 0.5}
    text = method_gain.tables(per_seed)
    # refine AP 11 / 13 / 15: mean 13, sample std 2
    assert "| student after refinement | 13.0 ± 2.0 | 26.0 ± 4.0 | 14.0 ± 2.0 | 11.0 / 13.0 / 15.0 |" in text
    # refined >= 1.5 x 8 = 12 holds for seeds 1 and 2 only
    assert "| student refined >= 1.5 x supervised-only | 2 / 3 | -1.0 / +1.0 / +3.0 |" in text
    # the labeling passes: counts as integers, rates with two decimals
    assert "| 0 | adapted | 4.50 | 0.50 |" in text and "| matched |" not in text
    assert method_gain._number(622.0) == "622" and method_gain._number(0.314) == "0.31"


def test_saved_bytes_counts_each_storage_once_and_skips_parameters():
    w = torch.nn.Parameter(torch.ones(10))
    x = torch.ones(1000, requires_grad=True)
    counter = step_memory.SavedBytes([w])
    with counter.hooks():
        y = x.exp()  # saves its output y: 4000 bytes
        z = y.sin()  # saves its input y again: the same storage, not counted twice
        (z[:10] * w).sum()  # saves w (a parameter: skipped) and a view of z (z's storage: 4000 bytes)
    assert counter.total == 8000
