"""The arithmetic of bench/ tools: method_gain's paired differences and verdicts, learning_curves' budget
rule, step_memory's count of the bytes autograd saves."""
import json

import pytest
import torch

from bench import learning_curves, method_gain, step_memory

AP = {"teacher_initial": 2.0, "teacher_finetune": 10.0, "teacher_selftrain": 12.0, "baseline": 8.0, "distill": 9.0,
      "refine": 11.0}


def _seed(shift: float) -> dict:
    """One seed's result records: test AP as AP (refine shifted), val AP one below, a labeling pass."""
    out = {k: {"test_mask_AP": v + (shift if k == "refine" else 0.0), "test_mask_AP50": 2 * v,
               "test_mask_AP_agnostic": v + 1, "mask_AP": v - 1} for k, v in AP.items()}
    for n in ("finetune", "adapted"):
        out[f"label_{n}"] = {"quality_precision": 0.5, "quality_recall": 0.25, "quality_mask_AP": 7.0,
                             "quality_instances_per_image": 4.5}
    return out


def test_paired_differences_mean_se_and_verdicts():
    per_seed = {seed: _seed(shift) for seed, shift in ((0, 0.0), (1, 2.0), (2, 4.0))}
    text, summary = method_gain.tables(per_seed)
    # refine test AP 11 / 13 / 15: mean 13, sample std 2, s.e. 2 / sqrt(3) = 1.15
    assert "| student after refinement | 13.0 ± 1.2 | 22.0 ± 0.0 | 12.0 ± 0.0 | 10.0 ± 0.0 | 11.0 / 13.0 / 15.0 |" in text
    claims = summary["claims"]
    # refined - distilled: 2 / 4 / 6 -> mean 4, s.e. 1.15: 4 > 2.31, holds
    assert claims["student: refined > distilled"]["per_seed"] == [2.0, 4.0, 6.0]
    assert claims["student: refined > distilled"]["verdict"] == "holds"
    # refined - 0.9 x 12 = 0.2 / 2.2 / 4.2: mean 2.2 < 2 x 1.15: not resolved
    assert claims["student: refined >= 0.9 x adapted teacher"]["mean"] == pytest.approx(2.2)
    assert claims["student: refined >= 0.9 x adapted teacher"]["verdict"] == "not resolved"
    # distilled - supervised is +1 in every seed: s.e. 0, holds
    assert claims["student: distilled > supervised-only"]["verdict"] == "holds"
    assert "| teacher: adapted > fine-tuned | +2.00 ± 0.00 | 0.00 | holds | +2.0 / +2.0 / +2.0 |" in text
    assert "| 0 | adapted | 0.50 | 0.25 | 7.00 | 4.50 |" in text
    assert method_gain.verdict(-3.0, 1.0, 5) == "missed" and method_gain.verdict(1.0, 1.0, 5) == "not resolved"
    assert method_gain.verdict(5.0, 0.0, 1) == "one seed: not resolved"


def test_a_seed_counts_as_finished_only_with_every_step_of_this_config(tmp_path):
    for step in method_gain.STEPS:
        (tmp_path / f"{step}.json").write_text(json.dumps({"config_digest": "abc", "metrics": {}}))
    assert method_gain.finished(tmp_path, "abc") and not method_gain.finished(tmp_path, "other")
    (tmp_path / "refine.json").unlink()
    assert not method_gain.finished(tmp_path, "abc")


def test_budget_rule_by_hand():
    """Trailing 3-point means of 1, 5, 8, 9, 9.5, 9.4, 9.6 are 1, 3, 4.67, 7.33, 8.83, 9.3, 9.5: plateau 9.5, first
    within 0.5 of it at the 6th evaluation (9.3 >= 9.0); the last mean is the highest and 0.67 above two
    evaluations back, so the curve is still rising."""
    curve = [{"iteration": 100 * (i + 1), "mask_AP": v} for i, v in enumerate([1, 5, 8, 9, 9.5, 9.4, 9.6])]
    b = learning_curves.budget(curve)
    assert (b["plateau"], b["budget"], b["at_budget"], b["last"], b["still_rising"]) == (9.5, 600, 9.3, 9.5, True)
    flat = learning_curves.budget(curve[:4] + [{"iteration": 500 + 100 * i, "mask_AP": 9.0} for i in range(4)])
    assert flat["plateau"] == 9.0 and not flat["still_rising"]


def test_saved_bytes_counts_each_storage_once_and_skips_parameters():
    w = torch.nn.Parameter(torch.ones(10))
    x = torch.ones(1000, requires_grad=True)
    counter = step_memory.SavedBytes([w])
    with counter.hooks():
        y = x.exp()  # saves its output y: 4000 bytes
        z = y.sin()  # saves its input y again: the same storage, not counted twice
        (z[:10] * w).sum()  # saves w (a parameter: skipped) and a view of z (z's storage: 4000 bytes)
    assert counter.total == 8000
