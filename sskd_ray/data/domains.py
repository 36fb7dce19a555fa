"""The built-in benchmark's two domains: what the stand-in foundation teacher saw, and what the user has.

SOURCE (the teacher's pretraining world, `jobs/pretrain_teacher.py`): Fashion-MNIST items the shipped
assets do not contain (training file for train scenes, test file for val scenes; the shipped
indices are excluded exactly, `fashion_mnist.unshipped_objects`), on procedural backgrounds (colour
gradients, smoothed noise, flat tints; never the shipped photographs), larger objects, bright
tints, little occlusion, no clutter.

TARGET (the demo's data, `sskd_ray.data.builtin`): the shipped items only, on the shipped real
photographs, smaller objects, distractor blobs that are not objects (clutter, drawn under the
objects) and occluder blobs drawn over them (they cut the masks). Teacher pretraining never sees a
target object or background; the shift is what adaptation has to bridge.

The recipe values below were chosen by measuring the pretrained teacher's zero-shot AP on target
val against the AP after adaptation (sskd_ray/data/assets/teacher_source.json lists what was tried).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage



@dataclass(frozen=True)
class Domain:
    name: str
    background: str  # "photo" (the shipped textures) | "procedural"
    scale: tuple[float, float]  # object side / scene side, uniform in this range
    colour: tuple[float, float]  # per-channel object tint (0-255), uniform in this range
    clutter: tuple[int, int]  # distractor blobs under the objects, count in [lo, hi]
    occluders: tuple[int, int]  # blobs over the objects (they cut the masks), count in [lo, hi]
    blob_scale: tuple[float, float] = (0.1, 0.3)  # blob diameter / scene side

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


SOURCE = Domain("source", background="procedural", scale=(0.28, 0.5), colour=(90.0, 255.0), clutter=(0, 0),
                occluders=(0, 1), blob_scale=(0.08, 0.18))
TARGET = Domain("target", background="photo", scale=(0.2, 0.4), colour=(60.0, 255.0), clutter=(2, 5),
                occluders=(1, 3))
DOMAINS = {d.name: d for d in (SOURCE, TARGET)}


def _resize(array: np.ndarray, side: int, resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((side, side), resample))


def photo_background(rng: np.random.Generator, textures: np.ndarray, size: int) -> np.ndarray:
    """A random crop of a shipped photograph, resized, tinted and darkened (float32 [size, size, 3])."""
    texture = textures[rng.integers(len(textures))]
    crop = int(rng.integers(size // 2, texture.shape[0] + 1))
    y, x = rng.integers(0, texture.shape[0] - crop + 1, size=2)
    patch = _resize(texture[y:y + crop, x:x + crop], size, Image.BILINEAR).astype(np.float32)
    tint = rng.uniform(0.5, 1.0, size=3)
    return patch * tint * rng.uniform(0.5, 0.9)


def procedural_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour gradient at a random angle, plus smoothed noise and a flat tint (float32 [size, size, 3])."""
    a, b = rng.uniform(20, 200, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)[..., None]
    canvas = a * (1 - t) + b * t
    sigma = rng.uniform(1.0, size / 8)
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size, 3)), (sigma, sigma, 0))
    noise /= noise.std() + 1e-6
    canvas = canvas + noise * rng.uniform(0, 30)
    return (canvas * rng.uniform(0.6, 1.0, size=3)).astype(np.float32)


def blob(rng: np.random.Generator, size: int, scale: tuple[float, float]) -> np.ndarray:
    """A rotated ellipse with a noisy edge somewhere in the scene: a bool mask [size, size]."""
    radii = rng.uniform(*scale, size=2) * size / 2
    cy, cx = rng.uniform(0, size, size=2)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    edge = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0) * 0.6
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 < 1.0 + edge


def paint_blob(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Fill `mask` on `canvas` with a flat colour under smoothed-noise shading (not a garment)."""
    colour = rng.uniform(30, 230, size=3)
    shade = 0.75 + 0.25 * np.tanh(ndimage.gaussian_filter(rng.standard_normal(mask.shape), 1.5) * 3)
    canvas[mask] = (shade[..., None] * colour)[mask]


def background(rng: np.random.Generator, domain: Domain, textures: np.ndarray, size: int) -> np.ndarray:
    """The domain's background with its clutter blobs painted in."""
    if domain.background == "photo":
        canvas = photo_background(rng, textures, size)
    elif domain.background == "procedural":
        canvas = procedural_background(rng, size)
    else:
        raise ValueError(f"domain '{domain.name}': background '{domain.background}' is not 'photo' or 'procedural'")
    for _ in range(int(rng.integers(domain.clutter[0], domain.clutter[1] + 1))):
        paint_blob(rng, canvas, blob(rng, size, domain.blob_scale))
    return canvas
