"""Reads Fashion-MNIST from Debian's `dataset-fashion-mnist` package and knows which items the
shipped assets hold (sskd_ray/data/assets/fashion_objects.npz, made by make_assets.py beside it).

Fashion-MNIST: Zalando Research, MIT licence. The idx format: a 4-byte magic whose last byte is
the number of dimensions, then one big-endian uint32 per dimension, then uint8 data.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
PER_CLASS = {"train": 300, "test": 100}  # items per class the shipped assets hold


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_split(split: str, root: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, 28, 28], labels [n]) of Fashion-MNIST's `train` or `test` file."""
    prefix = "train" if split == "train" else "t10k"
    paths = [root / f"{prefix}-{kind}-idx{nd}-ubyte.gz" for kind, nd in (("images", 3), ("labels", 1))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST file(s) not found: {', '.join(missing)}; install Debian's "
                                f"package: `apt-get install dataset-fashion-mnist`")
    return read_idx(paths[0]), read_idx(paths[1])


def shipped_indices(root: Path = FASHION_DIR) -> dict[str, np.ndarray]:
    """{"train", "test"}: the indices into each Fashion-MNIST file that fashion_objects.npz holds, in
    its order (seed 0, train drawn first, PER_CLASS per class)."""
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "test"):
        labels = read_split(split, root)[1]
        out[split] = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: PER_CLASS[split]]
                                     for c in range(10)])
    return out


def unshipped_objects(root: Path = FASHION_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": training-file items, "val": test-file items}, each (images, labels, indices): every
    Fashion-MNIST item except the shipped ones (the source domain of the teacher's pretraining)."""
    out = {}
    for split, shipped in shipped_indices(root).items():
        images, labels = read_split(split, root)
        keep = np.setdiff1d(np.arange(len(labels)), shipped)
        out["train" if split == "train" else "val"] = images[keep], labels[keep], keep
    return out
