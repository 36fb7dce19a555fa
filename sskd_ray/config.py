"""Typed configuration: dataclasses with defaults in code, YAML overrides, dotted `a.b=c` overrides.

The dataclasses are the schema: each field's type says what it accepts, a `Literal` lists its
allowed values and `Annotated[..., Field(...)]` its range. `load_config` merges the YAML files and
overrides onto the defaults and validates the result once, with pydantic in strict mode: an unknown
key, a wrong type, a value outside its choices or range fails fast, naming the dotted key. Pydantic
is used because it reads all of that from the dataclasses' own annotations (OmegaConf's structured
configs cannot express `Literal` choices or ranges). The resolved config is saved next to the
outputs (`save_config`) and flattened for MLflow params (`flatten_config`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import ConfigDict, Field, with_config

from sskd_ray import storage
from sskd_ray.redaction import redact

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]
# unknown keys are errors, in YAML files and dotted overrides alike
schema = with_config(ConfigDict(extra="forbid"))


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or an invalid value."""


@schema
@dataclass
class DataConfig:
    # "builtin" generates the fashion-scenes benchmark into <run_dir>/data; "coco" reads the paths below.
    source: Literal["builtin", "coco"] = "builtin"
    train_json: str = ""
    train_images: str = ""
    val_json: str = ""
    val_images: str = ""
    # held-out test split, evaluated once per stage at its end ("" = none): val is for choices
    # (iterations, thresholds, learning rates), test is what reported tables read
    test_json: str = ""
    test_images: str = ""
    labeled_fraction: Fraction = 0.1
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
    train_short_side: NonNegative = 0
    scale_jitter: Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=2, max_length=2)] = field(
        default_factory=lambda: [1.0, 1.0])  # [lo, hi], lo <= hi
    crop_size: Annotated[list[Positive], Field(max_length=2)] = field(default_factory=list)  # [h, w] or []
    eval_short_side: NonNegative = 0
    eval_max_side: NonNegative = 0


@schema
@dataclass
class ModelConfig:
    """One instance-segmentation model. `encoder` picks the backbone; the rest are plain numbers."""
    kind: Literal["maskformer", "gdino_sam2"] = "maskformer"
    encoder: Literal["dinov2", "resnet50", "sam2_hiera", "efficientnet_lite0", "efficientnet_lite1",
                     "efficientnet_lite2"] = "efficientnet_lite0"
    neck: Literal["fpn", "dpt"] = "fpn"
    preset: Literal["full", "builtin", "tiny"] = "builtin"
    # hub id / local dir; "builtin" = shipped ImageNet weights; "source" = the built-in maskformer teacher
    # pretrained on the built-in source domain (assets/teacher_source.pt); "" = random
    pretrained: str = "builtin"
    hidden_dim: int = 96
    num_queries: int = 16
    decoder_layers: int = 3
    num_heads: int = 4
    ffn_dim: int = 384
    embed_dim: int = 32
    embed_kernel: Literal[1, 3] = 3  # the embedding head's first conv: 3 (3 x 3) or 1 (a per-pixel MLP)
    dropout: float = 0.1
    image_size: int = 128
    # gdino_sam2 teacher only
    detector: str = "openmmlab-community/mm_grounding_dino_large_o365v2_oiv6_goldg"
    segmenter: str = "facebook/sam2.1-hiera-large"
    detector_kind: Literal["", "grounding-dino", "mm-grounding-dino"] = ""  # "": from the checkpoint's config.json
    freeze_text_encoder: bool = True  # keep the detector's BERT text encoder (110M) frozen
    # recompute the detector's encoder / decoder layers in backward (activation memory of the teacher
    # stages at full size: see docs/benchmarks.md "paper_shape")
    gradient_checkpointing: bool = False
    detector_short_side: int = 800  # Grounding-DINO's input: short side (native aspect) ...
    detector_max_side: int = 1333  # ... capped so the long side stays within this
    max_text_len: int = 0  # tokens per prompt chunk; 0 = the detector's own (256 released)
    # transformers (Sam2Model; `segmenter` a hub id / dir) | sam2 (Meta's package, extra [sam2]; `segmenter`
    # "<config>:<checkpoint.pt>", e.g. "sam2.1_hiera_l:/ckpt/sam2.1_hiera_large.pt")
    segmenter_backend: Literal["transformers", "sam2"] = "transformers"
    # parameter-name prefixes kept frozen in training, e.g. ["encoder"] or, for the VFM teacher,
    # ["detector.model.backbone", "segmenter.vision_encoder"]; a prefix matching nothing is an error
    freeze: list[str] = field(default_factory=list)
    # CNN encoders (EfficientNet, ResNet): BatchNorm layers use their pretrained statistics and affine
    # terms, never updated (for small per-GPU batches)
    frozen_batchnorm: bool = False


@schema
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
    temperature: Annotated[float, Field(gt=0.0)] = 0.1  # tau
    sampler: Literal["uniform", "mask", "class", "fusion"] = "fusion"
    score_power: float = 1.0  # d, d^2 (2.0), sqrt(d) (0.5)
    negative_scope: Literal["batch", "memory_bank"] = "batch"
    memory_bank_size: int = 10000
    loss_form: Literal["infonce", "hinge"] = "infonce"
    margin: float = 0.2
    max_anchors: int = 4096  # anchors per step (subsampled uniformly when more)


@schema
@dataclass
class StageConfig:
    iterations: Positive = 200
    batch_size: Positive = 8
    lr: float = 1e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.05
    schedule: Literal["poly", "multistep"] = "poly"
    grad_clip: float = 0.1  # 0 disables
    use_pseudo_labels: bool = False
    use_contrastive: bool = False
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 50
    num_workers: Positive = 1
    cpus_per_worker: Positive = 2  # Ray CPUs per training worker; also its torch thread count
    use_gpu: bool = False
    max_failures: int = 2
    # with use_pseudo_labels: the share of each batch drawn from the pseudo-labeled pool (at least one
    # image, at most all but one)
    pseudo_share: Fraction = 0.5
    prefetch: NonNegative = 2  # batches drawn ahead on a thread while the step runs; 0: in the loop
    amp: bool = True  # bf16 autocast on GPU workers (CPU workers always run fp32)
    log_every: NonNegative = 0  # iterations per logged row; 0: iterations / 20, between 1 and 10


@schema
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


@schema
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
    lease_seconds: Annotated[float, Field(gt=0.0)] = 60.0
    lease_wait_seconds: Annotated[float, Field(ge=0.0)] = 0.0


@schema
@dataclass
class TrackingConfig:
    uri: str = ""  # "" -> $MLFLOW_TRACKING_URI or sqlite:///<run_dir>/mlflow.db
    experiment: str = "sskd-ray"


@schema
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


def _yaml_loader() -> type:
    """YAML 1.1 reads `3e-4` (no dot) as a string; this loader reads it as the float people mean,
    with YAML 1.2's float pattern."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                 list("-+0123456789."))
    return Loader


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_yaml_loader())


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", c) with c parsed as YAML (so 3, 0.1, true, [1, 2] get their types)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    return key.strip(), read_yaml(raw) if raw.strip() else ""


def _merge(into: dict, values: dict) -> None:
    """Nested dicts merge key by key (a YAML file overrides what it names); anything else replaces."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _nest(key: str, value: Any) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@functools.cache
def _validator() -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(Config)


def _message(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "unexpected_keyword_argument":
        section = Config
        for part in error["loc"][:-1]:
            section = typing.get_type_hints(section)[part]
        known = ", ".join(f.name for f in dataclasses.fields(section))
        return f"unknown config key '{key}' (known: {known})"
    return f"{key}: {error['msg']} (got {error['input']!r})"


def _validate(values: dict) -> Config:
    try:  # JSON mode: strict types, and nested sections given as mappings
        cfg = _validator().validate_json(json.dumps(values, default=str), strict=True)
    except pydantic.ValidationError as err:
        raise ConfigError("; ".join(_message(e) for e in err.errors())) from None
    d = cfg.data
    if d.scale_jitter[0] > d.scale_jitter[1]:
        raise ConfigError(f"data.scale_jitter: {d.scale_jitter} is not [lo, hi] with lo <= hi")
    if len(d.crop_size) == 1:
        raise ConfigError(f"data.crop_size: {d.crop_size} is not [h, w] (or [] for square crops)")
    if d.source == "coco" and not (d.train_json and d.val_json):
        raise ConfigError("data.source=coco needs data.train_json and data.val_json")
    return cfg


def load_config(path: str | Path | list | tuple | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then each YAML file in order (overrides only), then each dotted override in order."""
    values = config_to_dict(Config())
    for file in ([path] if isinstance(path, (str, Path)) else list(path or [])):
        if not file:
            continue
        if not storage.is_file(file):
            raise ConfigError(f"config file not found: {file}")
        loaded = read_yaml(storage.read_text(file)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: top level must be a mapping")
        _merge(values, loaded)
    for text in overrides:
        _merge(values, _nest(*parse_override(text)))
    return _validate(values)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


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
    text = json.dumps(config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
