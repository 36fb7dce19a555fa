"""The Ray Data UDF: one actor holds the teacher; one call labels one shard of images and writes
that shard's Parquet file atomically, so a finished shard is never redone and never half-written.

Decoding happens here, per image (`decode_image`): a bad file is listed with its reason and the
rest of its shard is labeled as usual.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from sskd_ray import storage
from sskd_ray.config import LabelConfig
from sskd_ray.data.pseudo_labels import write_shard
from sskd_ray.label.lease import check_held
from sskd_ray.models.build import build_model
from sskd_ray.models.checkpoint import ModelCard, load_trained
from sskd_ray.models.inference import predict_arrays, read_images
from sskd_ray.models.postprocess import instances_to_coco, select_instances


@dataclass
class TeacherRef:
    """Which teacher labels: a trained model's folder, or (folder "") the model its card describes, as
    configured (the built-in teacher with its shipped weights; random weights in smoke runs)."""
    card: ModelCard  # classes, category ids and the input sizes it runs at
    id: str  # stored with every label: a store holds one teacher's labels
    folder: str = ""


def load_teacher(teacher: TeacherRef, device: torch.device | str = "cpu") -> nn.Module:
    if teacher.folder:
        return load_trained(teacher.folder, device)[0]
    torch.manual_seed(0)  # random-weight teachers (smoke) must be the same model in every actor
    return build_model(teacher.card.model, teacher.card.class_names).to(device).eval()


class TeacherPredictor:
    def __init__(self, teacher: TeacherRef, out_dir: str, cfg: LabelConfig, lease: str = ""):
        torch.set_num_threads(max(1, cfg.torch_threads))  # several actors share the cores: no oversubscription
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_teacher(teacher, self.device)
        self.teacher, self.cfg = teacher, cfg
        self.out_dir = storage.normalize(out_dir)
        self.select = partial(select_instances, score_threshold=cfg.score_threshold, nms_iou=cfg.nms_iou,
                              max_instances=cfg.top_k)
        self.lease = lease  # the run's claim on the store: checked before each shard is committed (lease.py)

    def label_shard(self, shard: str, images: list[dict]) -> dict:
        started, start = time.time(), time.perf_counter()  # wall clock: compared with the driver's (actor start)
        errors: list[dict] = []
        readable = read_images(images, self.cfg.max_image_pixels, errors)
        rows = []
        for im, array, insts in predict_arrays(self.model, readable, self.teacher.card.inference, self.select,
                                               self.cfg.batch_size, self.device):
            coco = instances_to_coco(insts, im["image_id"], self.teacher.card.category_ids)
            rows.append({"image_id": im["image_id"], "file_name": im["file_name"], "height": array.shape[0],
                         "width": array.shape[1], "teacher": self.teacher.id,
                         "key": im.get("key", im["path"]),  # the store's image key (pseudo_labels.py)
                         "instances": [{"category_id": r["category_id"], "score": r["score"], "bbox": r["bbox"],
                                        "segmentation": r["segmentation"]["counts"]} for r in coco]})
        check_held(self.lease)  # a run that lost the store to another writes nothing more
        # errors first, then the shard: a shard file on disk means everything about it is recorded
        storage.write_text(storage.join(self.out_dir, "errors", f"{shard}.json"), json.dumps(errors))
        write_shard(storage.join(self.out_dir, f"{shard}.parquet"), rows)
        return {"shard": shard, "labeled": len(rows), "skipped": len(errors), "seconds": time.perf_counter() - start,
                "started": started, "worker": os.getpid()}  # the actor's process: one per actor for the whole run

    def __call__(self, batch: dict) -> dict:
        results = [self.label_shard(s, json.loads(imgs)) for s, imgs in zip(batch["shard"], batch["images"])]
        return {key: np.array([r[key] for r in results]) for key in results[0]}
