import io

import numpy as np
from PIL import Image

from sskd_ray.data.decode import decode_image


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_converts_the_common_odd_formats():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out, reason = decode_image(_png(rgb))
    assert reason == "" and np.array_equal(out, rgb)
    grey, _ = decode_image(_png(rgb[..., 0]))
    assert grey.shape == (5, 7, 3) and np.array_equal(grey[..., 1], rgb[..., 0])
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 7, np.uint8)], axis=2)
    out, _ = decode_image(_png(rgba))
    assert np.array_equal(out, rgb)
    deep = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000)  # 16-bit, max 34000
    assert Image.open(io.BytesIO(_png(deep))).mode.startswith("I;16")
    out, reason = decode_image(_png(deep))
    assert reason == "" and out.dtype == np.uint8 and out.shape == (5, 7, 3)
    assert out[-1, -1, 0] == 255 and out[0, 0, 0] == 0


def test_refuses_corrupt_truncated_and_huge_with_reasons():
    good = _png(np.zeros((64, 64, 3), np.uint8))
    assert decode_image(b"not an image")[1].startswith("cannot decode")
    out, reason = decode_image(good[: len(good) // 2])
    assert out is None and "cannot decode" in reason
    out, reason = decode_image(good, max_pixels=100)
    assert out is None and "too large: 64x64" in reason
