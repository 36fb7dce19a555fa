"""A trained model's folder, with its one writer (`save_trained`) and one reader (`load_trained`).

    <folder>/config.json        the card: which model (ModelConfig), its class names and dataset
                                category ids, the input sizes it runs at, teacher or student, and
                                where it came from (stage, run, code commit)
    <folder>/model.safetensors  the weights: tensors only, so loading a file runs no code

The layout follows transformers' `save_pretrained` (a config.json beside a safetensors file); no
code is taken from it. Folders written before this format (`model.pt`, a pickled state dict, beside
`teacher.json`) still load, with one printed line saying so. A folder may be local or a URI.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from sskd_ray import storage
from sskd_ray.config import ModelConfig
from sskd_ray.data.resize import InferenceSizes
from sskd_ray.models.build import build_model
from sskd_ray.redaction import redact

CARD_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
LEGACY_CARD, LEGACY_WEIGHTS = "teacher.json", "model.pt"
FORMAT, VERSION = "sskd-ray trained model", 1
ROLES = ("teacher", "student")
_ALIASES = "aliases"  # safetensors metadata: {name: name it shares its tensor with} (tied weights)


@dataclass
class Provenance:
    stage: str = ""  # the step that trained it (teacher_selftrain, distill, ...)
    run: str = ""  # the stage's folder, where its metrics and history are
    commit: str = ""  # the code's git commit ("-dirty" with uncommitted changes), "unknown" outside git


@dataclass
class ModelCard:
    model: ModelConfig
    class_names: list[str]
    category_ids: list[int]  # the dataset id of each output class, in output order
    inference: InferenceSizes
    role: str = "student"  # teacher | student
    provenance: Provenance = field(default_factory=Provenance)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict) -> ModelCard:
        """A card's dict; model fields this code does not know (a newer card) are left out."""
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        model = ModelConfig(**{k: v for k, v in values["model"].items() if k in known})
        sizes = values.get("inference") or {}  # cards from before native-aspect inference: the training size
        inference = InferenceSizes(int(sizes.get("short_side") or model.image_size), int(sizes.get("max_side") or 0))
        return cls(model, list(values["class_names"]), list(values["category_ids"]), inference,
                   values.get("role", ""), Provenance(**values.get("provenance", {})))


def make_card(model: ModelConfig, role: str, class_names: list[str], category_ids: list[int],
              inference: InferenceSizes, stage: str = "", run: str = "") -> ModelCard:
    """The card of a model trained from `model`. A maskformer's card builds it without its pretrained
    weights (`pretrained: ""`): the folder's own weights replace them anyway."""
    if role not in ROLES:
        raise ValueError(f"role '{role}' is not one of {ROLES}")
    if model.kind == "maskformer":
        model = dataclasses.replace(model, pretrained="")
    return ModelCard(model, list(class_names), list(category_ids), inference, role,
                     Provenance(stage, redact(str(run)), code_commit()))


def code_commit() -> str:
    """The git commit of this code, "-dirty" when tracked files changed; "unknown" outside a checkout."""
    repo = Path(__file__).resolve().parents[2]

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state dict. A tensor that is another entry's very tensor (tied weights)
    is stored once and named in the metadata; other tensors that share memory are copied apart,
    since safetensors refuses shared memory."""
    tensors, aliases, same, storages = {}, {}, {}, set()
    for name, tensor in state.items():
        t = tensor.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in same:
            aliases[name] = same[key]
            continue
        same[key] = name
        t = t.to("cpu").contiguous()  # safetensors stores row-major only: channels-last conv weights too
        if t.numel() and t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return safetensors.torch.save(tensors, metadata={_ALIASES: json.dumps(aliases)})


def _metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file: its header is an 8-byte little-endian length, then JSON."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]).get("__metadata__") or {}


def save_trained(folder: str | Path, model: nn.Module, card: ModelCard) -> str:
    """Write `model`'s weights and `card` into `folder` (local or URI); returns the folder."""
    folder = storage.normalize(folder)
    storage.write_bytes(storage.join(folder, WEIGHTS_FILE), _weights_bytes(model.state_dict()))
    storage.write_json(storage.join(folder, CARD_FILE), card.as_dict())
    return folder


def _files(folder: str) -> tuple[str, str, bool]:
    """(card, weights, legacy) of a trained model folder; FileNotFoundError naming what is missing."""
    for card, weights, legacy in ((CARD_FILE, WEIGHTS_FILE, False), (LEGACY_CARD, LEGACY_WEIGHTS, True)):
        if storage.is_file(storage.join(folder, card)) and storage.is_file(storage.join(folder, weights)):
            return storage.join(folder, card), storage.join(folder, weights), legacy
    raise FileNotFoundError(f"{redact(folder)} is not a trained model folder: it needs {CARD_FILE} and "
                            f"{WEIGHTS_FILE} (or, written before them, {LEGACY_CARD} and {LEGACY_WEIGHTS}); "
                            f"pass a stage's final/ folder, e.g. <run_dir>/student/final")


def is_trained_folder(folder: str | Path) -> bool:
    try:
        _files(storage.normalize(folder))
    except FileNotFoundError:
        return False
    return True


def read_card(folder: str | Path) -> ModelCard:
    card, _, _ = _files(storage.normalize(folder))
    return ModelCard.from_dict(storage.read_json(card))


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The state dict stored in `folder` (tied weights restored under each of their names)."""
    folder = storage.normalize(folder)
    _, weights, legacy = _files(folder)
    data = storage.read_bytes(weights)
    if legacy:
        print(redact(f"{folder}: a trained model folder in the old format ({LEGACY_WEIGHTS} + {LEGACY_CARD}); "
                     f"it loads as before, and save_trained writes {WEIGHTS_FILE} + {CARD_FILE}"))
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state = safetensors.torch.load(data)
    for name, same in json.loads(_metadata(data).get(_ALIASES, "{}")).items():
        state[name] = state[same]
    # names in sorted order: the file's tensor order and its aliases' do not follow the model's, and a
    # caller that saves this dict again (the pretraining job's fp16 copy) must write the same bytes each run
    return dict(sorted(state.items()))


def weights_digest(folder: str | Path) -> str:
    """A short hash of the weights file: part of a teacher's identity in a pseudo-label store."""
    _, weights, _ = _files(storage.normalize(folder))
    return hashlib.sha256(storage.read_bytes(weights)).hexdigest()[:12]


def load_trained(folder: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelCard]:
    """-> (the model in eval mode on `device`, its card). The weights load strictly: every tensor of
    the architecture the card describes must be in the folder, and nothing else."""
    card = read_card(folder)
    model = build_model(card.model, card.class_names)
    model.load_state_dict(read_weights(folder))
    return model.to(device).eval(), card
