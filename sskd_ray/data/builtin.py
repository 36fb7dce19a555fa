"""The built-in benchmark: "fashion scenes", real Fashion-MNIST garments composited on backgrounds.

Two domains (sskd_ray/data/domains.py): the TARGET (the demo's data: the shipped items on random
crops of the shipped photographs, with clutter and occluder blobs) and the SOURCE the stand-in
foundation teacher is pretrained on (`jobs/pretrain_teacher.py`: unshipped items on procedural
backgrounds). A scene has 2-6 garments pasted at random scale, position and colour. Masks are exact: a garment's mask is its silhouette (pixels above a threshold,
holes filled), and each later garment cuts the masks of those below it; a garment left with too
little visible area is dropped (occluder blobs cut masks too). Train scenes use objects from Fashion-MNIST's training file, val
and test scenes objects from its test file (the shipped held-out garments; no others ship). Val is
for choices (iterations, thresholds, learning rates); test, made from its own random stream, is what
reported tables read. Everything is seeded: one seed gives byte-identical output.

    python -m sskd_ray.data.builtin --out DIR [--train 600] [--val 500] [--test 500] [--size 128] [--seed 0] [--domain target]

writes DIR/train.json, DIR/val.json, DIR/test.json (COCO instances), DIR/images/{train,val,test}/*.png,
and DIR/splits/labeled_<pct>.txt (Guided-Distillation-style list of the labeled train images).
"""
from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from sskd_ray import storage
from sskd_ray.data.coco import encode_rle, mask_to_bbox, write_coco
from sskd_ray.data.domains import DOMAINS, SOURCE, TARGET, Domain, background, blob, paint_blob
from sskd_ray.data.fashion_mnist import unshipped_objects
from sskd_ray.data.splits import split_by_fraction, write_split_file

CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
ASSET_DIR = Path(__file__).parent / "assets"
MIN_VISIBLE_PIXELS = 40
SILHOUETTE_THRESHOLD = 12


@dataclass(frozen=True)
class Assets:
    objects: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images [n, 28, 28], labels [n])
    textures: np.ndarray  # [t, 256, 256, 3]


def load_assets(domain: str = "target") -> Assets:
    """The target domain's shipped items and photographs, or the source domain's unshipped items
    (read from the Fashion-MNIST package; no photographs)."""
    if domain == "source":
        return Assets(objects=unshipped_objects(), textures=np.zeros((0, 1, 1, 3), np.uint8))
    objects = np.load(ASSET_DIR / "fashion_objects.npz")
    textures = np.load(ASSET_DIR / "textures.npz")["textures"]
    return Assets(
        objects={"train": (objects["train_images"], objects["train_labels"]),
                 "val": (objects["test_images"], objects["test_labels"])},
        textures=textures,
    )


def _silhouette(glyph: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(glyph > SILHOUETTE_THRESHOLD)


def _resize(array: np.ndarray, side: int, resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((side, side), resample))


def render_scene(rng: np.random.Generator, assets: Assets, split: str, size: int, max_instances: int = 6,
                 domain: Domain = TARGET) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """One scene of `domain`: (uint8 image [size, size, 3], visible masks, class indices), bottom to top."""
    glyphs, labels = assets.objects[split][:2]
    canvas = background(rng, domain, assets.textures, size)
    masks: list[np.ndarray] = []
    classes: list[int] = []
    lo, hi = (max(4, int(round(f * size))) for f in domain.scale)
    for _ in range(int(rng.integers(2, max_instances + 1))):
        k = int(rng.integers(len(glyphs)))
        side = int(rng.integers(lo, hi + 1))
        glyph = _resize(glyphs[k], side, Image.BILINEAR).astype(np.float32) / 255.0
        shape = _resize(_silhouette(glyphs[k]).astype(np.uint8) * 255, side, Image.NEAREST) > 127
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        full = np.zeros((size, size), dtype=bool)
        full[y:y + side, x:x + side] = shape
        colour = rng.uniform(*domain.colour, size=3)
        region = canvas[y:y + side, x:x + side]
        shading = (0.35 + 0.65 * glyph)[..., None] * colour
        region[shape] = shading[shape]
        for m in masks:  # the new garment occludes everything below it
            m &= ~full
        masks.append(full)
        classes.append(int(labels[k]))
    for _ in range(int(rng.integers(domain.occluders[0], domain.occluders[1] + 1))):
        cover = blob(rng, size, domain.blob_scale)  # not an object: it only hides what is below
        paint_blob(rng, canvas, cover)
        for m in masks:
            m &= ~cover
    keep = [i for i, m in enumerate(masks) if m.sum() >= MIN_VISIBLE_PIXELS]
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return image, [masks[i] for i in keep], [classes[i] for i in keep]


def categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "garment"} for i, name in enumerate(CLASS_NAMES)]


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


SPLITS = {"train": 0, "val": 1, "test": 2}  # each split's random stream, and its id / annotation-id block


def write_split(out: str, split: str, count: int, size: int, seed: int, assets: Assets,
                max_instances: int = 6, domain: Domain = TARGET) -> str:
    stream = SPLITS[split]
    rng = np.random.default_rng([seed, stream, 0 if domain.name == "target" else 1])
    objects = "train" if split == "train" else "val"  # val and test: held-out garments
    images, annotations = [], []
    for i in range(count):
        image, masks, classes = render_scene(rng, assets, objects, size, max_instances, domain)
        file_name = f"{split}/{i:06d}.png"
        storage.write_bytes(storage.join(out, "images", file_name), _png_bytes(image))
        image_id = stream * 1_000_000 + i + 1
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for mask, cls in zip(masks, classes):
            annotations.append({
                "id": len(annotations) + 1 + stream * 10_000_000,
                "image_id": image_id, "category_id": cls + 1, "segmentation": encode_rle(mask),
                "area": int(mask.sum()), "bbox": mask_to_bbox(mask), "iscrowd": 0,
            })
    return write_coco(storage.join(out, f"{split}.json"), images, annotations, categories())


def build_builtin_dataset(out: str | Path, num_train: int = 600, num_val: int = 500, size: int = 128,
                          seed: int = 0, labeled_fraction: float = 0.1, max_instances: int = 6,
                          domain: str = "target", num_test: int = 0) -> str:
    """Write the `domain` ("target": the demo's; "source": the teacher's pretraining world) dataset under
    `out`, a folder or URI (skipped when a finished copy with the same settings is there); returns
    `out` as a normalized location. `num_test` > 0 adds a test split (test.json)."""
    if domain not in DOMAINS:
        raise ValueError(f"builtin domain '{domain}' is not one of {sorted(DOMAINS)}")
    recipe = DOMAINS[domain]
    out = storage.normalize(out)
    stamp = (f"train={num_train} val={num_val} size={size} seed={seed} frac={labeled_fraction} max={max_instances} "
             f"domain={recipe.as_dict()}" + (f" test={num_test}" if num_test else "") + "\n")
    done = storage.join(out, "DONE")
    if storage.is_file(done) and storage.read_text(done) == stamp:
        return out
    assets = load_assets(domain)
    train_json = write_split(out, "train", num_train, size, seed, assets, max_instances, recipe)
    write_split(out, "val", num_val, size, seed, assets, max_instances, recipe)
    if num_test:
        write_split(out, "test", num_test, size, seed, assets, max_instances, recipe)
    images = storage.read_json(train_json)["images"]
    labeled, _ = split_by_fraction([im["id"] for im in images], labeled_fraction, seed)
    write_split_file(storage.join(out, "splits", f"labeled_{round(labeled_fraction * 100)}.txt"), images, labeled)
    storage.write_text(done, stamp)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=600, help="number of train scenes")
    parser.add_argument("--val", type=int, default=500, help="number of val scenes")
    parser.add_argument("--test", type=int, default=500, help="number of test scenes (0: none)")
    parser.add_argument("--size", type=int, default=128, help="scene side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labeled-fraction", type=float, default=0.1)
    parser.add_argument("--domain", choices=sorted(DOMAINS), default="target")
    args = parser.parse_args(argv)
    out = build_builtin_dataset(args.out, args.train, args.val, args.size, args.seed, args.labeled_fraction,
                                domain=args.domain, num_test=args.test)
    print(f"wrote the built-in dataset to {out} (train.json, val.json{', test.json' if args.test else ''}, images/, splits/)")


if __name__ == "__main__":
    main()
