"""What a training step reads: labeled images with ground truth and pool images with pseudo-labels.

A `TrainingSet` is built inside each Ray Train worker from plain paths (a COCO json + image dir for
the labeled part, a pseudo-label store + image dir for the pool), so nothing large crosses the
driver. Batches are drawn by index from a generator seeded with (seed, iteration), so a worker
restarted from a checkpoint at iteration t sees exactly the batches it would have seen; each rank
takes its own slice of the global batch (a sharded loader without a sampler's state to save).

An image that cannot be read is skipped and recorded (path + reason); the batch takes the next one.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sskd_ray import storage
from sskd_ray.data.coco import load_coco
from sskd_ray.data.store_reader import ShareSamples, StoreShare
from sskd_ray.data.views import ViewPair, make_views


@dataclass
class Sample:
    path: str
    image_id: int
    labeled: bool  # ground truth (True) or pseudo-labels (False)
    row: int  # index into the CocoDataset's images or this worker's StoreShare


@dataclass
class ViewSizes:
    """How training views are sized (DataConfig's train_short_side, scale_jitter, crop_size)."""
    short_side: int
    crop_size: tuple[int, int]  # (h, w)
    scale_jitter: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def from_data(cls, data: dict) -> "ViewSizes":
        """From a stage's data dict; a dict without the native-aspect keys gives the square recipe."""
        short = int(data.get("train_short_side") or data["image_size"])
        crop = data.get("crop_size") or [short, short]
        return cls(short, (int(crop[0]), int(crop[1])), tuple(float(v) for v in data.get("scale_jitter", (1.0, 1.0))))


@dataclass
class Batch:
    weak: torch.Tensor  # (B, 3, h, w) in [0, 1], (h, w) = the crop size
    strong: torch.Tensor  # (B, 3, h, w) in [0, 1]
    crop_boxes: torch.Tensor  # (B, 4)
    strong_flipped: torch.Tensor  # (B,) bool
    targets: list[dict]  # per image {"labels": (n,), "masks": (n, h, w) bool}, in the weak view's frame
    labeled: torch.Tensor  # (B,) bool
    pad_mask: torch.Tensor | None = None  # (B, h, w) bool: True on the weak view's real pixels (the strong view has no padding)


@dataclass
class TrainingSet:
    labeled: list[Sample]
    pseudo: list[Sample]
    image_size: int
    coco: object
    store: StoreShare | None = None  # this worker's share of the pseudo-label store, read lazily
    category_ids: list[int] = field(default_factory=list)
    score_threshold: float = 0.3
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    def targets(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        if sample.labeled:
            return self.coco.instance_masks(self.coco.images[sample.row])
        return self.store.targets(sample.row, self.category_ids, self.score_threshold)


def build_training_set(labeled_json: str, labeled_images: str, image_size: int, pseudo_dir: str = "",
                       pseudo_images: str = "", score_threshold: float = 0.3, rank: int = 0,
                       world_size: int = 1, pseudo_skip: dict[str, list[int]] | None = None) -> TrainingSet:
    """The pool part is this rank's share of the store (disjoint across ranks), read lazily, less the
    rows in `pseudo_skip` (an image's second row: pseudo_labels.duplicate_rows)."""
    coco = load_coco(labeled_json, labeled_images, check_files=False)
    labeled = [Sample(coco.image_path(im), im["id"], True, i) for i, im in enumerate(coco.images)]
    pseudo, store = [], None
    if pseudo_dir:
        store = StoreShare.open(pseudo_dir, rank, world_size, skip=pseudo_skip)
        pseudo = ShareSamples(store, lambda r, row: Sample(storage.resolve(pseudo_images, row["file_name"]),
                                                           int(row["image_id"]), False, r))
    if not labeled:
        raise ValueError(f"{labeled_json}: no labeled images to train on")
    return TrainingSet(labeled, pseudo, image_size, coco, store, coco.category_ids, score_threshold)


def _load_image(path: str) -> torch.Tensor:
    with Image.open(io.BytesIO(storage.read_bytes(path))) as im:
        array = np.asarray(im.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255  # (3, H, W)


def _resize_masks(masks: np.ndarray, views: ViewPair, chunk: int = 16) -> torch.Tensor:
    """(n, H, W) masks of the original image -> (n, h, w) bool in the weak view's frame: scaled like the
    image (bilinear, > 0.5), flipped with it, cropped at its offset and padded (False) to the crop size.

    Only the crop window is resampled (`grid_sample` at its pixels' centres, which is what
    `F.interpolate(align_corners=False)` computes there), a few masks at a time: a 2x-jittered
    Cityscapes frame would be 2048 x 4096 floats per instance if scaled whole."""
    ch, cw = views.weak.shape[-2:]
    (sh, sw), (top, left) = views.scaled_size, views.offset
    rh, rw = max(0, min(ch, sh - top)), max(0, min(cw, sw - left))
    if masks.shape[0] == 0 or rh == 0 or rw == 0:
        return torch.zeros(masks.shape[0], ch, cw, dtype=torch.bool)
    x_start = sw - left - rw if views.weak_flipped else left  # the window in the unflipped scaled image
    ys = (top + torch.arange(rh, dtype=torch.float32) + 0.5) / sh  # fractions of the original's height
    xs = (x_start + torch.arange(rw, dtype=torch.float32) + 0.5) / sw
    grid = (torch.stack([xs[None, :].expand(rh, rw), ys[:, None].expand(rh, rw)], dim=-1) * 2 - 1)[None]
    parts = []
    for s in range(0, masks.shape[0], chunk):
        m = torch.from_numpy(masks[s:s + chunk])[:, None].float()  # (k, 1, H, W)
        parts.append(F.grid_sample(m, grid.expand(m.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border",
                                   align_corners=False)[:, 0] > 0.5)  # (k, rh, rw)
    m = torch.cat(parts)
    if views.weak_flipped:
        m = m.flip(-1)
    return F.pad(m, (0, cw - rw, 0, ch - rh))  # False in the padding


def load_example(ts: TrainingSet, sample: Sample, generator: torch.Generator, photometric: bool = True,
                 sizes: ViewSizes | None = None):
    """-> (ViewPair, {"labels", "masks"} in the weak view's frame); raises on an unreadable image.
    `sizes` default: square views of side ts.image_size."""
    sizes = sizes or ViewSizes(ts.image_size, (ts.image_size, ts.image_size))
    image = _load_image(sample.path)
    masks, labels = ts.targets(sample)
    if masks.shape[0] and masks.shape[1:] != image.shape[1:]:
        raise ValueError(f"annotation size {masks.shape[1:]} != image size {tuple(image.shape[1:])}")
    views = make_views(image, sizes.short_side, generator, photometric=photometric, crop_size=sizes.crop_size,
                       scale_jitter=sizes.scale_jitter)
    resized = _resize_masks(masks, views)
    keep = resized.flatten(1).any(1)  # instances too small to survive the resize, or outside the crop, are dropped
    return views, {"labels": torch.from_numpy(labels)[keep], "masks": resized[keep]}


def draw_batch(ts: TrainingSet, iteration: int, seed: int, batch_size: int, rank: int, world_size: int,
               pseudo_share: float, sizes: ViewSizes | None = None) -> Batch:
    """This rank's part of the global batch for `iteration` (global size = batch_size * world_size).

    With a pool, `pseudo_share` of each rank's images come from it (at least one, at most B - 1)."""
    rng = np.random.default_rng([seed, iteration])
    n_pseudo = 0
    if ts.pseudo and pseudo_share > 0:
        n_pseudo = min(max(1, round(batch_size * pseudo_share)), batch_size - 1) if batch_size > 1 else 1
    n_labeled = batch_size - n_pseudo
    picks = []
    for pool, count in ((ts.labeled, n_labeled), (ts.pseudo, n_pseudo)):
        if count == 0:
            continue
        order = rng.permutation(len(pool)) if len(pool) >= count * world_size else rng.integers(0, len(pool), 4 * count * world_size)
        # lazy: the pool may be a StoreShare, whose samples are read only when taken
        candidates = map(pool.__getitem__, order[rank::world_size])  # disjoint per rank when the pool allows
        picks.append((candidates, count))
    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)) + rank)
    views, targets, flags = [], [], []
    for candidates, count in picks:
        taken = 0
        for sample in candidates:
            if taken == count:
                break
            if sample.path in ts.skipped:
                continue
            try:
                view, target = load_example(ts, sample, generator, sizes=sizes)
            except Exception as err:  # noqa: BLE001 - any unreadable image is skipped and listed, not fatal
                ts.skipped[sample.path] = f"{type(err).__name__}: {err}"
                continue
            views.append(view)
            targets.append(target)
            flags.append(sample.labeled)
            taken += 1
    if not views:
        raise RuntimeError(f"no readable training image at iteration {iteration}; skipped: {list(ts.skipped.items())[:5]}")
    return Batch(weak=torch.stack([v.weak for v in views]), strong=torch.stack([v.strong for v in views]),
                 crop_boxes=torch.stack([v.crop_box for v in views]),
                 strong_flipped=torch.stack([v.strong_flipped for v in views]), targets=targets,
                 labeled=torch.tensor(flags), pad_mask=torch.stack([v.pad_mask for v in views]))
