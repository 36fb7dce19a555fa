"""Use a trained model: `Student.from_pretrained(folder)` / `Teacher.from_pretrained(folder)`, then
`.predict(images)`.

    from sskd_ray.models.pretrained import Student

    student = Student.from_pretrained("runs/demo/student/final")      # a folder or an s3:// / gs:// URI
    for instances in student.predict(["a.png", "b.jpg"]):              # paths, URIs or (H, W, 3) uint8 arrays
        for inst in instances:                                         # highest score first
            print(student.class_names[inst.label], inst.score, inst.mask.shape)   # mask: the image's own size

The API follows the spirit of transformers' `from_pretrained` / `save_pretrained` (a folder with a
config and safetensors weights; sskd_ray/models/checkpoint.py); the two classes differ in the role
they accept, so a teacher's folder is not taken for a student's by mistake.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from sskd_ray import storage
from sskd_ray.models.checkpoint import ModelCard, load_trained, save_trained
from sskd_ray.models.inference import predict_arrays, read_image
from sskd_ray.models.postprocess import Instance, select_instances


class TrainedModel:
    """A trained model with its card: its classes, dataset category ids and input sizes."""
    role = ""  # the card role this class loads ("": any)

    def __init__(self, model: nn.Module, card: ModelCard, folder: str = ""):
        self.model, self.card, self.folder = model.eval(), card, folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
        """Load a trained model's folder (a stage's final/ folder, local or URI) onto `device`."""
        folder = storage.normalize(folder)
        model, card = load_trained(folder, device)
        if cls.role and card.role and card.role != cls.role:
            other = "Teacher" if card.role == "teacher" else "Student"
            raise ValueError(f"{folder} holds a {card.role} (stage {card.provenance.stage or '?'}), not a {cls.role}: "
                             f"load it with {other}.from_pretrained")
        return cls(model, card, folder)

    def save_pretrained(self, folder: str | Path) -> str:
        return save_trained(folder, self.model, self.card)

    @property
    def class_names(self) -> list[str]:
        return self.card.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.card.category_ids

    def predict(self, images: list, threshold: float = 0.3, top_k: int = 20, nms_iou: float = 0.5,
                batch_size: int = 8) -> list[list[Instance]]:
        """One list of instances per image, highest score first: `label` (an index into `class_names`),
        `score` (class probability x mask quality, >= `threshold`) and `mask` ((H, W) bool at the
        image's own size). At most `top_k` per image; masks overlapping a higher-scoring one at IoU >=
        `nms_iou` are dropped. `images`: paths or URIs, PIL images, or (H, W, 3) uint8 arrays."""
        arrays = [_as_array(image) for image in images]
        select = partial(select_instances, score_threshold=threshold, nms_iou=nms_iou, max_instances=top_k)
        found = predict_arrays(self.model, enumerate(arrays), self.card.inference, select, batch_size)
        return [instances for _, _, instances in found]


class Student(TrainedModel):
    role = "student"


class Teacher(TrainedModel):
    role = "teacher"


def _as_array(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        array, reason = read_image(str(image))
        if array is None:
            raise ValueError(f"{image}: {reason}")
        return array
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image array must be (H, W, 3) uint8, got {array.dtype} {array.shape}")
    return array
