"""Freezing policy and per-part learning rates, by parameter-name prefix."""
from __future__ import annotations

from torch import nn


def apply_freeze(model: nn.Module, prefixes: list[str]) -> int:
    """Freeze every parameter whose name starts with one of `prefixes`; returns how many were frozen.
    A prefix that matches nothing is an error (a typo would otherwise silently train everything)."""
    frozen = 0
    for prefix in prefixes:
        hits = [p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            raise ValueError(f"freeze prefix '{prefix}' matches no parameter of {type(model).__name__}")
        for p in hits:
            p.requires_grad_(False)
        frozen += len(hits)
    return frozen


def backbone_prefixes(model: nn.Module) -> tuple[str, ...]:
    return getattr(model, "backbone_prefixes", ("encoder",))


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """AdamW groups: backbone parameters at lr * backbone_lr_mult; norms and biases without decay."""
    groups: dict[tuple[bool, bool], list] = {}
    prefixes = backbone_prefixes(model)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (name.startswith(prefixes), p.ndim <= 1)
        groups.setdefault(key, []).append(p)
    return [{"params": params, "lr": lr * (backbone_lr_mult if backbone else 1.0),
             "weight_decay": 0.0 if no_decay else weight_decay, "initial_lr": lr * (backbone_lr_mult if backbone else 1.0)}
            for (backbone, no_decay), params in groups.items()]
