"""Labeled / unlabeled splits: seeded fractions, or Guided-Distillation-style split files.

A split file lists the labeled images one per line (`perc_10.txt`); entries may be full file names,
paths, or stems, and are matched against each image's `file_name` by stem, so a list made for one
directory layout works in another.
"""
from __future__ import annotations

from pathlib import Path

from sskd_ray import storage

import numpy as np


def split_by_fraction(image_ids: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split: round(fraction * n) labeled ids (at least 1), the rest unlabeled; both sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled fraction {fraction} is not in (0, 1]")
    ids = sorted(image_ids)
    n_labeled = max(1, int(round(fraction * len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    labeled = sorted(ids[i] for i in order[:n_labeled])
    unlabeled = sorted(ids[i] for i in order[n_labeled:])
    return labeled, unlabeled


def _stem(name: str) -> str:
    return Path(name.strip()).name.rsplit(".", 1)[0]


def read_split_file(path: str | Path, images: list[dict]) -> tuple[list[int], list[int]]:
    """Labeled = images named in the file; unlabeled = the rest. Unknown names fail, listing a few."""
    if not storage.is_file(path):
        raise FileNotFoundError(f"split file not found: {path}")
    wanted = {_stem(line) for line in storage.read_text(path).splitlines() if line.strip()}
    by_stem = {_stem(im["file_name"]): im["id"] for im in images}
    unknown = sorted(wanted - by_stem.keys())
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} listed image(s) not in the dataset, e.g. {unknown[:3]}")
    labeled = sorted(by_stem[s] for s in wanted)
    labeled_set = set(labeled)
    return labeled, sorted(i for i in by_stem.values() if i not in labeled_set)


def write_split_file(path: str | Path, images: list[dict], labeled_ids: list[int]) -> str:
    keep = set(labeled_ids)
    return storage.write_text(path, "".join(f"{im['file_name']}\n" for im in images if im["id"] in keep))
