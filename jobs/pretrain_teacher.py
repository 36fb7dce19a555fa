"""Pretrain the built-in stand-in foundation teacher on the source domain; ship its weights.

    python jobs/pretrain_teacher.py [--iterations N] [--seed 0] [--out DIR] [--work-dir DIR] [--smoke]

The demo's teacher (configs/default.yaml `teacher`: the EfficientNet-Lite2 maskformer, ImageNet
initialised) trained fully supervised on built-in SOURCE scenes (sskd_ray/data/domains.py: Fashion-MNIST
items the shipped assets do not hold, procedural backgrounds), with the project's own machinery: one
supervised-only Ray Train stage (sskd_ray.train.stages.run_stage) and its evaluation
(sskd_ray.eval.model_eval). The fp16 weights are then scored on source val and on the demo's TARGET
val (the same scenes the demo evaluates on) and written with a provenance file:

    <out>/teacher_source.pt     fp16 state dict (what `teacher.pretrained: source` loads)
    <out>/teacher_source.json   command, seed, data recipe, model and stage config, commit, wall time,
                                machine, mask AP / AP50 on source val and target val

--out defaults to the package's assets folder; --smoke (tiny model and data, a few iterations, for
tests) must be given another --out. Needs Debian's `dataset-fashion-mnist`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sskd_ray import storage, tracking
from sskd_ray.config import DataConfig, LossConfig, ModelConfig, StageConfig, load_config
from sskd_ray.data.builtin import load_assets, write_split
from sskd_ray.data.coco import load_coco
from sskd_ray.data.domains import SOURCE, TARGET
from sskd_ray.data.fashion_mnist import FASHION_DIR
from sskd_ray.eval.model_eval import evaluate_model
from sskd_ray.models.build import build_model, load_source_weights, tiny_model_config
from sskd_ray.models.checkpoint import code_commit, read_weights
from sskd_ray.ray_setup import init_ray
from sskd_ray.train.stage_spec import StageInputs, StageSpec
from sskd_ray.train.stages import run_stage

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "sskd_ray" / "data" / "assets"
WEIGHTS, PROVENANCE = "teacher_source.pt", "teacher_source.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ASSETS), help="where the weights and provenance go")
    parser.add_argument("--work-dir", default="runs/pretrain_teacher", help="data, stage folder, MLflow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1500)  # the shipped weights'
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--source-train", type=int, default=3000, help="source train scenes")
    parser.add_argument("--source-val", type=int, default=200, help="source val scenes")
    parser.add_argument("--target-val", type=int, default=500, help="target val scenes (the demo's val split)")
    parser.add_argument("--size", type=int, default=128, help="scene side in pixels")
    parser.add_argument("--max-instances", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="tiny model and data, 4 iterations (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        if Path(args.out).resolve() == ASSETS.resolve():
            parser.error("--smoke writes toy weights: give it another --out than the package's assets")
        args.iterations, args.batch_size, args.size = 4, 2, 64
        args.source_train, args.source_val, args.target_val = 12, 4, 4
    return args


def teacher_config(smoke: bool) -> ModelConfig:
    """The demo teacher's architecture (configs/default.yaml), ImageNet-initialised for pretraining."""
    model = replace(load_config(REPO / "configs" / "default.yaml").teacher, pretrained="builtin")
    return tiny_model_config(model) if smoke else model


def make_data(args: argparse.Namespace, work: str) -> dict[str, str]:
    """Source train / val and target val COCO sets under `work`; {name: json path}. The target val
    split is the demo's (same seed, size and recipe as build_builtin_dataset's)."""
    if not FASHION_DIR.is_dir():
        sys.exit(f"error: Fashion-MNIST not found at {FASHION_DIR}: install it with "
                 f"`apt-get install dataset-fashion-mnist` (Debian / Ubuntu)")
    source, target = load_assets("source"), load_assets("target")
    return {
        "source_train": write_split(storage.join(work, "source"), "train", args.source_train, args.size, args.seed,
                                    source, args.max_instances, SOURCE),
        "source_val": write_split(storage.join(work, "source"), "val", args.source_val, args.size, args.seed,
                                  source, args.max_instances, SOURCE),
        "target_val": write_split(storage.join(work, "target"), "val", args.target_val, args.size, args.seed,
                                  target, args.max_instances, TARGET),
    }


def stage_spec(args: argparse.Namespace, work: str, data: dict[str, str], model: ModelConfig) -> StageSpec:
    train = load_coco(data["source_train"], check_files=False)
    stage = StageConfig(iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, backbone_lr_mult=1.0,
                        weight_decay=0.01, schedule="multistep", grad_clip=0.0,
                        checkpoint_every=max(50, args.iterations // 4))
    images = lambda name: storage.join(work, name, "images")  # noqa: E731
    # DataConfig's defaults: square views and evaluation at the model's image size
    inputs = StageInputs(data["source_train"], images("source"), data["source_val"], images("source"))
    return StageSpec("teacher_pretrain", storage.join(work, "stage"), "teacher", model, stage,
                     LossConfig(max_anchors=1024), DataConfig(), inputs, train.class_names, train.category_ids,
                     seed=args.seed, storage=storage.join(work, "ray_train"))


def save_fp16(trained: str, out: Path) -> Path:
    state = read_weights(trained)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(half, out / WEIGHTS)
    return out / WEIGHTS


def evaluate_shipped(weights: Path, model: ModelConfig, spec: StageSpec, work: str, data: dict) -> dict:
    """mask AP / AP50 of the fp16 weights (loaded as the demo loads them) on source val and target val."""
    torch.manual_seed(spec.seed)
    net = build_model(replace(model, pretrained=""), spec.class_names)
    load_source_weights(net, weights)
    out = {}
    for name, root in (("source_val", "source"), ("target_val", "target")):
        metrics, _ = evaluate_model(net, data[name], storage.join(work, root, "images"), model.image_size,
                                    category_ids=spec.category_ids)
        out[name] = {k: round(v, 2) for k, v in metrics.items() if k in ("mask_AP", "mask_AP50")}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    start, commit = time.perf_counter(), code_commit()  # before this job's outputs change the tree
    work = storage.normalize(args.work_dir)
    torch.set_num_threads(2)
    data = make_data(args, work)
    model = teacher_config(args.smoke)
    spec = stage_spec(args, work, data, model)
    init_ray(address="local")
    stage_metrics = run_stage(spec, tracking.resolve_tracking_uri("", work), "sskd-ray-pretrain")
    weights = save_fp16(storage.join(spec.folder, "final"), Path(args.out))
    scores = evaluate_shipped(weights, model, spec, work, data)
    provenance = {
        "command": " ".join(["python jobs/pretrain_teacher.py", shlex.join(argv)]).strip(), "seed": args.seed,
        "commit": commit, "iterations": args.iterations, "batch_size": args.batch_size, "lr": args.lr,
        "data": {"source_train_scenes": args.source_train, "source_val_scenes": args.source_val,
                 "target_val_scenes": args.target_val, "size": args.size, "max_instances": args.max_instances,
                 "source": SOURCE.as_dict(), "target": TARGET.as_dict(),
                 "objects": "source: Fashion-MNIST items not in assets/fashion_objects.npz (train file for train "
                            "scenes, test file for val scenes); target: the shipped items only"},
        "model": {**dataclasses.asdict(model), "pretrained": "source (initialised from builtin ImageNet)"},
        "stage": dataclasses.asdict(spec.stage), "class_names": spec.class_names,
        "stage_wall_seconds": stage_metrics.get("wall_seconds"),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__},
        "ap": scores, "weights_bytes": weights.stat().st_size,
    }
    storage.write_json(str(Path(args.out) / PROVENANCE), provenance)
    print(f"source val mask AP {scores['source_val']['mask_AP']:.1f} / AP50 {scores['source_val']['mask_AP50']:.1f}; "
          f"target val (zero-shot) {scores['target_val']['mask_AP']:.1f} / {scores['target_val']['mask_AP50']:.1f}; "
          f"{weights} ({weights.stat().st_size / 1e6:.1f} MB), {provenance['wall_seconds']:.0f} s")
    return provenance


if __name__ == "__main__":
    main()
