"""Decode one image's bytes into uint8 RGB, or say why not. Never raises on bad input.

Grayscale, palette, RGBA (alpha dropped), and 16-bit images are converted; a corrupt or truncated
file, or one above `max_pixels` (decompression-bomb guard), is refused with a reason naming it.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> tuple[np.ndarray | None, str]:
    """bytes -> ((H, W, 3) uint8, "") on success, (None, reason) otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            w, h = image.size
            if w * h > max_pixels:
                return None, f"too large: {w}x{h} > {max_pixels} pixels"
            image.load()  # decode now, so truncation shows up here
    except Exception as err:  # PIL raises many types for bad files; each becomes a reason
        return None, f"cannot decode: {type(err).__name__}: {err}"
    array = np.asarray(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale the used range to 8 bits
        array = array.astype(np.float64)
        top = array.max() if array.max() > 255 else 255.0
        return np.repeat((array / top * 255).round().astype(np.uint8)[..., None], 3, axis=2), ""
    if image.mode != "RGB":  # grey, palette, RGBA, CMYK, ...
        array = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(array), ""
