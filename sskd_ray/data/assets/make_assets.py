"""Builds `fashion_objects.npz` and `textures.npz`, the small assets the built-in dataset needs.

Run once by a maintainer (needs Debian's `dataset-fashion-mnist` and scikit-image):
    python sskd_ray/data/assets/make_assets.py
Sources and licences are in README.md beside this file. Seeded: re-running gives the same arrays.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PER_CLASS = {"train": 300, "test": 100}
TEXTURES = ("grass", "gravel", "brick", "moon", "coffee", "rocket")
TEXTURE_SIZE = 256


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def pick_objects(split: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: PER_CLASS[split]] for c in range(10)])
    return images[keep], labels[keep].astype(np.uint8)


def make_textures() -> np.ndarray:
    import skimage.data
    from skimage.transform import resize

    out = []
    for name in TEXTURES:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        side = min(image.shape[:2])
        image = image[:side, :side, :3]
        image = resize(image, (TEXTURE_SIZE, TEXTURE_SIZE), anti_aliasing=True, preserve_range=True)
        out.append(image.round().astype(np.uint8))
    return np.stack(out)


def main() -> None:
    here = Path(__file__).parent
    rng = np.random.default_rng(0)
    train_x, train_y = pick_objects("train", rng)
    test_x, test_y = pick_objects("test", rng)
    np.savez_compressed(here / "fashion_objects.npz", train_images=train_x, train_labels=train_y,
                        test_images=test_x, test_labels=test_y)
    np.savez_compressed(here / "textures.npz", textures=make_textures(), names=np.array(TEXTURES))
    print("wrote", here / "fashion_objects.npz", here / "textures.npz")


if __name__ == "__main__":
    main()
