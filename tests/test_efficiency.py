"""Parameters, FLOPs and the alternating latency comparison (behaviour, not speed: timing goals live in bench/)."""
import torch
from torch import nn

from sskd_ray.eval.efficiency import compare_latency, count_flops


class _Counting(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width, bias=False)
        self.calls = []

    def forward(self, x):
        self.calls.append(len(self.calls))
        return self.linear(x)


def test_latency_pairs_alternate_and_every_model_gets_each_round():
    a, b = _Counting(4), _Counting(8)
    order = []
    a.register_forward_hook(lambda *_: order.append("a"))
    b.register_forward_hook(lambda *_: order.append("b"))
    result = compare_latency({"a": a, "b": b}, {"a": torch.rand(1, 4), "b": torch.rand(1, 8)}, rounds=5, warmup=2)
    assert set(result) == {"a", "b"} and all(v > 0 for v in result.values())
    assert len(a.calls) == len(b.calls) == 7 and order == ["a", "b"] * 7  # one of each per round, in turn


def test_flops_of_a_linear_map_by_hand():
    # (1 x 4) @ (4 x 4): 16 multiply-adds = 32 FLOPs
    assert count_flops(_Counting(4), torch.rand(1, 4)) == 32
