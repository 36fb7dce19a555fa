"""Typed configuration: dataclasses with defaults in code, YAML overrides, dotted `a.b=c` overrides.

Unknown keys and wrong types fail fast with the dotted key in the message. The resolved config is
saved next to the outputs (`save_config`) and flattened for MLflow params (`flatten_config`).
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sskd_ray import storage
from sskd_ray.redaction import redact

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 3e-4, 1E5: floats YAML 1.1 leaves as strings


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or an invalid value."""


@dataclass
class DataConfig:
    # "builtin" generates the fashion-scenes benchmark into <run_dir>/data; "coco" reads the paths below.
    source: str = "builtin"
    train_json: str = ""
    train_images: str = ""
    val_json: str = ""
    val_images: str = ""
    # held-out test split, evaluated once per stage at its end ("" = none): val is for choices
    # (iterations, thresholds, learning rates), test is what reported tables read
    test_json: str = ""
    test_images: str = ""
    labeled_fraction: float = 0.1
    split_file: str = ""  # Guided-Distillation-style list of labeled image names (overrides the fraction)
    seed: int = 0
    builtin_train_images: int = 600
    builtin_val_images: int = 500
    builtin_test_images: int = 500  # its own random stream, the same held-out garments as val
    builtin_image_size: int = 128
    image_size: int = 128  # training resolution (square)
    max_instances: int = 6
    # training/eval image reads from s3:// or gs:// go through a local LRU disk cache ("" -> the temp
    # dir's sskd-image-cache); 0 GB turns it off. Local paths are never cached.
    image_cache_dir: str = ""
    image_cache_gb: float = 20.0
    # Native aspect ratio (0 / empty = the stage model's image_size, which keeps the demo's square
    # 128-px scenes at 128). Training: short side train_short_side x U(scale_jitter), then a random
    # crop_size [h, w] crop (padded where the scaled image is smaller). Evaluation, labeling and
    # predict: short side eval_short_side, long side at most eval_max_side (0: no cap).
    train_short_side: int = 0
    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])
    crop_size: list[int] = field(default_factory=list)
    eval_short_side: int = 0
    eval_max_side: int = 0


@dataclass
class ModelConfig:
    """One instance-segmentation model. `encoder` picks the backbone; the rest are plain numbers."""
    kind: str = "maskformer"  # maskformer | gdino_sam2
    encoder: str = "efficientnet_lite0"  # dinov2 | resnet50 | sam2_hiera | efficientnet_lite0 | efficientnet_lite2
    neck: str = "fpn"  # fpn | dpt
    preset: str = "builtin"  # full | builtin | tiny
    # hub id / local dir; "builtin" = shipped ImageNet weights; "source" = the built-in maskformer teacher
    # pretrained on the built-in source domain (assets/teacher_source.pt); "" = random
    pretrained: str = "builtin"
    hidden_dim: int = 96
    num_queries: int = 16
    decoder_layers: int = 3
    num_heads: int = 4
    ffn_dim: int = 384
    embed_dim: int = 32
    embed_kernel: int = 3  # the embedding head's first conv: 3 (3 x 3) or 1 (a per-pixel MLP)
    dropout: float = 0.1
    image_size: int = 128
    # gdino_sam2 teacher only
    detector: str = "openmmlab-community/mm_grounding_dino_large_o365v2_oiv6_goldg"
    segmenter: str = "facebook/sam2.1-hiera-large"
    detector_kind: str = ""  # "" = from the checkpoint's config.json | grounding-dino | mm-grounding-dino
    freeze_text_encoder: bool = True  # keep the detector's BERT text encoder (110M) frozen
    # recompute the detector's encoder / decoder layers in backward (activation memory of the teacher
    # stages at full size: see docs/benchmarks.md "paper_shape")
    gradient_checkpointing: bool = False
    detector_short_side: int = 800  # Grounding-DINO's input: short side (native aspect) ...
    detector_max_side: int = 1333  # ... capped so the long side stays within this
    max_text_len: int = 0  # tokens per prompt chunk; 0 = the detector's own (256 released)
    # transformers (Sam2Model; `segmenter` a hub id / dir) | sam2 (Meta's package, extra [sam2]; `segmenter`
    # "<config>:<checkpoint.pt>", e.g. "sam2.1_hiera_l:/ckpt/sam2.1_hiera_large.pt")
    segmenter_backend: str = "transformers"
    # parameter-name prefixes kept frozen in training, e.g. ["encoder"] or, for the VFM teacher,
    # ["detector.model.backbone", "segmenter.vision_encoder"]; a prefix matching nothing is an error
    freeze: list[str] = field(default_factory=list)
    # CNN encoders (EfficientNet, ResNet): BatchNorm layers use their pretrained statistics and affine
    # terms, never updated (for small per-GPU batches)
    frozen_batchnorm: bool = False


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 3136  # 56 * 56, as in Mask2Former
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    pseudo_label_weight: float = 1.0  # alpha
    contrastive_weight: float = 0.2  # lambda
    num_negatives: int = 256  # K
    temperature: float = 0.1  # tau
    sampler: str = "fusion"  # uniform | mask | class | fusion
    score_power: float = 1.0  # d, d^2 (2.0), sqrt(d) (0.5)
    negative_scope: str = "batch"  # batch | memory_bank
    memory_bank_size: int = 10000
    loss_form: str = "infonce"  # infonce | hinge
    margin: float = 0.2
    max_anchors: int = 4096  # anchors per step (subsampled uniformly when more)


@dataclass
class StageConfig:
    iterations: int = 200
    batch_size: int = 8
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.05
    schedule: str = "poly"  # poly | multistep
    grad_clip: float = 0.1  # 0 disables
    use_pseudo_labels: bool = False
    use_contrastive: bool = False
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 50
    num_workers: int = 1
    cpus_per_worker: int = 2  # Ray CPUs per training worker; also its torch thread count
    use_gpu: bool = False
    max_failures: int = 2


@dataclass
class StagesConfig:
    teacher_finetune: StageConfig = field(default_factory=lambda: StageConfig(
        iterations=150, batch_size=4, lr=2e-4, weight_decay=0.01, schedule="multistep", grad_clip=0.0))
    teacher_selftrain: StageConfig = field(default_factory=lambda: StageConfig(
        iterations=250, batch_size=4, lr=2e-4, weight_decay=0.01, schedule="multistep", grad_clip=0.0,
        use_pseudo_labels=True, use_contrastive=True))
    distill: StageConfig = field(default_factory=lambda: StageConfig(
        iterations=400, batch_size=8, lr=3e-4, use_pseudo_labels=True, use_contrastive=True))
    refine: StageConfig = field(default_factory=lambda: StageConfig(iterations=100, batch_size=8, lr=1e-4))


@dataclass
class LabelConfig:
    score_threshold: float = 0.3  # on the fused score, class probability x mask quality (the paper's)
    # class-agnostic mask NMS among kept pseudo-labels (models/postprocess.select_instances): a mask
    # overlapping a higher-scoring kept one at IoU >= 0.5 would match the same object at the IoU-0.5
    # criterion the pseudo-label precision and AP50 use, so it can only be a duplicate
    nms_iou: float = 0.5
    batch_size: int = 8
    num_actors: int = 1
    max_actors: int = 0  # > num_actors: autoscaling actor pool
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 1.0
    torch_threads: int = 1
    images_per_shard: int = 64
    max_image_pixels: int = 40_000_000
    top_k: int = 20  # at most this many pseudo-labels (predictions) per image, highest score first
    # one run at a time per store (label/lease.py): a run's lease expires this long after it stops renewing
    # it (a dead run); another run waits for a live one, for ever when lease_wait_seconds is 0
    lease_seconds: float = 60.0
    lease_wait_seconds: float = 0.0


@dataclass
class TrackingConfig:
    uri: str = ""  # "" -> $MLFLOW_TRACKING_URI or sqlite:///<run_dir>/mlflow.db
    experiment: str = "sskd-ray"


@dataclass
class Config:
    run_dir: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(
        encoder="efficientnet_lite2", hidden_dim=128, num_queries=20, decoder_layers=4, ffn_dim=512,
        image_size=192, dropout=0.0))
    student: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `3e-4` (no dot) as a string; it is the float people mean
    if tp is type(None) and value is None:
        return None
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} ({value!r})")
    return value


def _build(cls: type, values: dict, prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
    obj = base if base is not None else cls()
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _build(type(current), value, full, base=current)
        else:
            setattr(obj, key, _coerce(value, hints[key], full))
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", c) with c parsed as YAML (so 3, 0.1, true, [1, 2] get their types)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(path: str | Path | list | tuple | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then each YAML file in order (overrides only), then each dotted override in order."""
    cfg = Config()
    for file in ([path] if isinstance(path, (str, Path)) else list(path or [])):
        if not file:
            continue
        if not storage.is_file(file):
            raise ConfigError(f"config file not found: {file}")
        values = yaml.safe_load(storage.read_text(file)) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{file}: top level must be a mapping")
        _build(Config, values, base=cfg)
    for text in overrides:
        key, value = parse_override(text)
        _build(Config, _nest(key, value), base=cfg)
    validate_config(cfg)
    return cfg


_CHOICES = {
    "data.source": ("builtin", "coco"),
    "loss.sampler": ("uniform", "mask", "class", "fusion"),
    "loss.negative_scope": ("batch", "memory_bank"),
    "loss.loss_form": ("infonce", "hinge"),
}


def validate_config(cfg: Config) -> None:
    flat = flatten_config(cfg)
    for key, allowed in _CHOICES.items():
        if flat[key] not in allowed:
            raise ConfigError(f"{key}: {flat[key]!r} is not one of {allowed}")
    for name in ("teacher", "student"):
        model = getattr(cfg, name)
        if model.kind not in ("maskformer", "gdino_sam2"):
            raise ConfigError(f"{name}.kind: {model.kind!r} is not one of ('maskformer', 'gdino_sam2')")
        if model.embed_kernel not in (1, 3):
            raise ConfigError(f"{name}.embed_kernel: {model.embed_kernel} is not 1 or 3")
        if model.preset not in ("full", "builtin", "tiny"):
            raise ConfigError(f"{name}.preset: {model.preset!r} is not one of ('full', 'builtin', 'tiny')")
    for stage_name in ("teacher_finetune", "teacher_selftrain", "distill", "refine"):
        stage = getattr(cfg.stages, stage_name)
        if stage.schedule not in ("poly", "multistep"):
            raise ConfigError(f"stages.{stage_name}.schedule: {stage.schedule!r} is not poly or multistep")
        if stage.iterations < 1 or stage.batch_size < 1 or stage.num_workers < 1 or stage.cpus_per_worker < 1:
            raise ConfigError(f"stages.{stage_name}: iterations, batch_size, num_workers and cpus_per_worker must be >= 1")
    if not 0.0 < cfg.data.labeled_fraction <= 1.0:
        raise ConfigError(f"data.labeled_fraction: {cfg.data.labeled_fraction} is not in (0, 1]")
    d = cfg.data
    if len(d.scale_jitter) != 2 or not 0 < d.scale_jitter[0] <= d.scale_jitter[1]:
        raise ConfigError(f"data.scale_jitter: {d.scale_jitter} is not [lo, hi] with 0 < lo <= hi")
    if d.crop_size and (len(d.crop_size) != 2 or min(d.crop_size) < 1):
        raise ConfigError(f"data.crop_size: {d.crop_size} is not [h, w] with positive sides (or [] for square)")
    if min(d.train_short_side, d.eval_short_side, d.eval_max_side) < 0:
        raise ConfigError("data.train_short_side, eval_short_side and eval_max_side must be >= 0")
    if cfg.loss.temperature <= 0:
        raise ConfigError("loss.temperature must be > 0")
    if cfg.data.source == "coco" and not (cfg.data.train_json and cfg.data.val_json):
        raise ConfigError("data.source=coco needs data.train_json and data.val_json")


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(values: dict) -> Config:
    cfg = _build(Config, values, base=Config())
    validate_config(cfg)
    return cfg


def flatten_config(cfg: Any) -> dict[str, Any]:
    """{"loss.temperature": 0.1, ...}: the flat form MLflow params and sweep overrides use.
    `cfg` is a config dataclass or its dict form (e.g. a saved config.yaml)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            full = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(value, full)
            else:
                out[full] = value

    walk(cfg if isinstance(cfg, dict) else config_to_dict(cfg), "")
    return out


def save_config(cfg: Config, path: str | Path) -> str:
    """The config as YAML, secrets in URIs replaced by *** (sskd_ray.redaction): not a way to carry them."""
    return storage.write_text(path, yaml.safe_dump(redact(config_to_dict(cfg)), sort_keys=False))


def config_digest(cfg: Any) -> str:
    """Short stable hash of a (sub)config, for naming things derived from it."""
    import hashlib

    text = json.dumps(config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
