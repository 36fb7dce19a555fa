"""Freezing policy and per-part learning rates, by parameter-name prefix."""
from __future__ import annotations

from timm.layers import freeze_batch_norm_2d
from torch import nn


def apply_freeze(model: nn.Module, prefixes: list[str]) -> int:
    """Freeze every parameter whose name starts with one of `prefixes`; returns how many were frozen.
    A prefix that matches nothing is an error (a typo would otherwise silently train everything).
    BatchNorm layers inside a frozen module keep their pretrained statistics too (timm's
    FrozenBatchNorm2d, the same state-dict keys): frozen means the layer computes what it did before
    training, whatever the batch (detectron2 freezes its backbone's first stages this way)."""
    frozen = 0
    for prefix in prefixes:
        hits = [p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")]
        if not hits:
            raise ValueError(f"freeze prefix '{prefix}' matches no parameter of {type(model).__name__}")
        for p in hits:
            p.requires_grad_(False)
        frozen += len(hits)
        _freeze_batch_norms(model, prefix)
    return frozen


def _freeze_batch_norms(model: nn.Module, prefix: str) -> None:
    """The BatchNorm layers in the module named `prefix` (nothing when it names a parameter) switched to
    fixed statistics, in place."""
    try:
        module = model.get_submodule(prefix)
    except AttributeError:
        return
    converted = freeze_batch_norm_2d(module)  # converts children in place; a BatchNorm itself is replaced
    if converted is not module:
        parent, _, name = prefix.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, converted)


def backbone_prefixes(model: nn.Module) -> tuple[str, ...]:
    return getattr(model, "backbone_prefixes", ("encoder",))


# Parameters that are not weights of a linear map: decaying them towards 0 only hurts (Mask2Former
# and DINOv2 train them without weight decay). Module types whose every parameter is such, and the
# names of bare nn.Parameter tokens and position tables in the models we use.
NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
NO_DECAY_NAMES = ("cls_token", "mask_token", "register_tokens", "position_embedding", "position_embeddings",
                  "pos_embed", "absolute_position_embeddings", "relative_position_bias_table", "level_embed",
                  "query_position_embeddings", "no_memory_embedding", "no_object_embedding")


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters trained without weight decay: biases and other vectors, every parameter
    of a norm layer or an embedding table (learned queries, query / level / position embeddings),
    and the token / position parameters named in NO_DECAY_NAMES."""
    names = set()
    for module_name, module in model.named_modules():
        own = module.named_parameters(prefix=module_name, recurse=False)
        for name, p in own:
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim <= 1 or isinstance(module, NO_DECAY_MODULES) or leaf in NO_DECAY_NAMES:
                names.add(name)
    return names


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
    """AdamW groups: backbone parameters at lr * backbone_lr_mult; `no_decay_names` without decay."""
    groups: dict[tuple[bool, bool], list] = {}
    prefixes = backbone_prefixes(model)
    skip_decay = no_decay_names(model)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (name.startswith(prefixes), name in skip_decay)
        groups.setdefault(key, []).append(p)
    return [{"params": params, "lr": lr * (backbone_lr_mult if backbone else 1.0),
             "weight_decay": 0.0 if no_decay else weight_decay, "initial_lr": lr * (backbone_lr_mult if backbone else 1.0)}
            for (backbone, no_decay), params in groups.items()]
