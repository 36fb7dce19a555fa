"""Builds `fashion_objects.npz` and `textures.npz`, the small assets the built-in dataset needs.

Run once by a maintainer (needs Debian's `dataset-fashion-mnist` and scikit-image):
    python sskd_ray/data/assets/make_assets.py
Sources and licences are in README.md beside this file. Seeded: re-running gives the same arrays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sskd_ray.data.fashion_mnist import read_split, shipped_indices

TEXTURES = ("grass", "gravel", "brick", "moon", "coffee", "rocket")
TEXTURE_SIZE = 256


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
    picked = {}
    for split, keep in shipped_indices().items():  # the same draws as before the split into fashion_mnist.py
        images, labels = read_split(split)
        picked[split] = images[keep], labels[keep].astype(np.uint8)
    np.savez_compressed(here / "fashion_objects.npz", train_images=picked["train"][0], train_labels=picked["train"][1],
                        test_images=picked["test"][0], test_labels=picked["test"][1])
    np.savez_compressed(here / "textures.npz", textures=make_textures(), names=np.array(TEXTURES))
    print("wrote", here / "fashion_objects.npz", here / "textures.npz")


if __name__ == "__main__":
    main()
