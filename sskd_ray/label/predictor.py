"""The Ray Data UDF: one actor holds the teacher; one call labels one shard of images and writes
that shard's Parquet file atomically, so a finished shard is never redone and never half-written.

Decoding happens here, per image (`decode_image`): a bad file is listed with its reason and the
rest of its shard is labeled as usual.
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import fields

import numpy as np
import torch

from sskd_ray import storage
from sskd_ray.config import ModelConfig
from sskd_ray.data.decode import decode_image
from sskd_ray.data.resize import inference_sizes, prepare_arrays, size_multiple
from sskd_ray.data.pseudo_labels import write_shard
from sskd_ray.label.lease import check_held
from sskd_ray.models.build import build_model
from sskd_ray.models.postprocess import instances_to_coco, select_instances


def build_teacher_from_spec(spec: dict) -> torch.nn.Module:
    """spec: {"model": ModelConfig fields, "class_names": [...], "checkpoint": path to a state dict or ""}."""
    known = {f.name for f in fields(ModelConfig)}
    torch.manual_seed(0)  # random-weight teachers (smoke) must be the same model in every actor
    model = build_model(ModelConfig(**{k: v for k, v in spec["model"].items() if k in known}), spec["class_names"])
    if spec.get("checkpoint"):
        state = io.BytesIO(storage.read_bytes(spec["checkpoint"]))  # a local file or a URI
        model.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
    return model.eval()


class TeacherPredictor:
    def __init__(self, spec: dict, out_dir: str, teacher_id: str, image_size: int, score_threshold: float,
                 top_k: int, batch_size: int, max_pixels: int, torch_threads: int = 1, nms_iou: float = 0.5,
                 lease: str = ""):
        torch.set_num_threads(max(1, torch_threads))  # several actors share the cores: no oversubscription
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = build_teacher_from_spec(spec).to(self.device)
        self.category_ids = spec["category_ids"]
        self.out_dir = storage.normalize(out_dir)
        self.teacher_id = teacher_id
        # native aspect: short side from the card's "inference" sizes, else `image_size`; long side capped there
        self.short_side, self.max_side = inference_sizes(spec, image_size)
        self.multiple = size_multiple(self.model)
        self.score_threshold, self.top_k, self.nms_iou = score_threshold, top_k, nms_iou
        self.batch_size, self.max_pixels = batch_size, max_pixels
        self.lease = lease  # the run's claim on the store: checked before each shard is committed (lease.py)

    def _predict(self, arrays: list[np.ndarray]) -> list[list]:
        out = []
        for s in range(0, len(arrays), self.batch_size):
            chunk = arrays[s:s + self.batch_size]
            with torch.inference_mode():
                batch, sizes = prepare_arrays(chunk, self.short_side, self.max_side, self.multiple, self.device)
                result = self.model(batch, image_sizes=sizes)
                out += select_instances(result, [a.shape[:2] for a in chunk], self.score_threshold, self.nms_iou,
                                        self.top_k, image_sizes=sizes, input_size=tuple(batch.shape[-2:]))
        return out

    def label_shard(self, shard: str, images: list[dict]) -> dict:
        started, start = time.time(), time.perf_counter()  # wall clock: compared with the driver's (actor start)
        decoded, errors = [], []
        for im in images:
            try:
                data = storage.read_bytes(im["path"])
            except OSError as err:
                errors.append({"path": im["path"], "reason": f"cannot read: {err}"})
                continue
            array, reason = decode_image(data, self.max_pixels)
            if array is None:
                errors.append({"path": im["path"], "reason": reason})
            else:
                decoded.append((im, array))
        instances = self._predict([a for _, a in decoded]) if decoded else []
        rows = []
        for (im, array), insts in zip(decoded, instances):
            coco = instances_to_coco(insts, im["image_id"], self.category_ids)
            rows.append({"image_id": im["image_id"], "file_name": im["file_name"], "height": array.shape[0],
                         "width": array.shape[1], "teacher": self.teacher_id,
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
