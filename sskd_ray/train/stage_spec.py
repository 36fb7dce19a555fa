"""What one training stage is: its typed settings and the files it reads (`StageSpec`). The pipeline
builds one per stage (train/pipeline.py), the stage runner hands it to Ray Train as it is
(train/stages.py), and every worker's loop reads it (train/loop.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from sskd_ray.config import DataConfig, LossConfig, ModelConfig, StageConfig
from sskd_ray.data.resize import InferenceSizes
from sskd_ray.models.checkpoint import ModelCard, make_card


@dataclass
class StageInputs:
    """The files a stage reads (local paths or URIs)."""
    labeled_json: str  # COCO json of the labeled images
    labeled_images: str  # the folder its file names are relative to
    val_json: str
    val_images: str
    pseudo_dir: str = ""  # a pseudo-label store; "" = labeled images only
    pseudo_images: str = ""  # the folder the store's file names are relative to
    # the held-out test split, scored once at the stage's end ("" = none)
    test_json: str = ""
    test_images: str = ""
    # rows of the store that label an image a second time, skipped by every worker (found once on the
    # driver before the stage starts: stages.check_pseudo_labels); {shard: [row, ...]}
    pseudo_skip: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class StageSpec:
    """Everything a stage's Ray Train workers need, typed: it reaches `train_loop_per_worker` as is."""
    name: str  # unique within the run: teacher_finetune, teacher_selftrain, distill, refine, baseline
    folder: str  # a local path or a URI
    role: str  # "teacher" | "student"
    model: ModelConfig
    stage: StageConfig
    loss: LossConfig
    data: DataConfig  # image cache and the native-aspect view / inference sizes
    inputs: StageInputs
    class_names: list[str]
    category_ids: list[int]
    score_threshold: float = 0.3  # pseudo-labels below this score are not trained on (label.score_threshold)
    seed: int = 0
    init: str = ""  # a trained model folder to start from ("" = the model config's pretrained weights)
    storage: str = ""  # Ray Train storage_path (local dir or URI); default <folder>/../../ray_train
    params: dict = field(default_factory=dict)  # extra MLflow params (the resolved flat config)

    @property
    def inference(self) -> InferenceSizes:
        return InferenceSizes.from_config(self.data, self.model.image_size)

    def card(self) -> ModelCard:
        """The card the stage's trained model is saved with."""
        return make_card(self.model, self.role, self.class_names, self.category_ids, self.inference,
                         stage=self.name, run=self.folder)
